"""Everything Redis-side: key names, Lua scripts and the `Broker` that calls them."""

from spillway.broker.broker import (
    AcceptReply,
    AcceptRequest,
    Broker,
    Delivery,
    Outcome,
    Started,
    unavailable,
)
from spillway.broker.keys import GROUP, Keys, ShardKeys, new_task_id, shard_of

__all__ = [
    "GROUP",
    "AcceptReply",
    "AcceptRequest",
    "Broker",
    "Delivery",
    "Keys",
    "Outcome",
    "ShardKeys",
    "Started",
    "new_task_id",
    "shard_of",
    "unavailable",
]
