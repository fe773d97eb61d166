"""Everything Redis-side: key names, Lua scripts and the `Broker` that calls them."""

from spillway.broker.broker import Broker
from spillway.broker.keys import GROUP, Keys, ShardKeys, new_task_id, shard_of
from spillway.broker.types import (
    AcceptRequest,
    Delivery,
    DueCheck,
    Outcome,
    Started,
    unavailable,
)

__all__ = [
    "GROUP",
    "AcceptRequest",
    "Broker",
    "Delivery",
    "DueCheck",
    "Keys",
    "Outcome",
    "ShardKeys",
    "Started",
    "new_task_id",
    "shard_of",
    "unavailable",
]
