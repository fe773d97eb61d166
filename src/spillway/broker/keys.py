"""Every Redis key name Spillway uses, in one place.

The keys of one task (record, idempotency key, completion channel) share a hash tag with its
shard's streams, due sets and dead-letter streams, so each script touches a single hash slot and
the same scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import zlib
from dataclasses import dataclass

from redis.crc import key_slot

__all__ = ["GROUP", "Keys", "ShardKeys", "new_task_id", "shard_of", "shard_tag"]

#: The consumer group every worker of a shard joins.
GROUP = "spillway"


def shard_of(token: str, shards: int) -> int:
    """The shard a task id (or idempotency key) belongs to."""
    return zlib.crc32(token.encode()) % shards if shards > 1 else 0


_ids: collections.deque[str] = collections.deque()
os.register_at_fork(after_in_child=_ids.clear)  # a forked child must never reuse the parent's


def _random_id() -> str:
    # One urandom call per 256 ids: at tens of thousands of enqueues a second, a system call
    # per id was a measurable share of the accept cost.
    try:
        return _ids.popleft()
    except IndexError:
        raw = os.urandom(16 * 256).hex()
        _ids.extend(raw[i : i + 32] for i in range(32, len(raw), 32))
        return raw[:32]


def new_task_id(shard: int | None = None, shards: int = 1) -> str:
    """A random 32-hex-digit task id (128 bits from the OS); with `shard`, one of that shard."""
    while True:
        task_id = _random_id()
        if shard is None or shard_of(task_id, shards) == shard:
            return task_id


_SLOTS = 16384


@functools.cache
def shard_tag(prefix: str, shard: int, shards: int) -> str:
    """The hash tag of one shard, chosen so the shards' slots spread evenly over 0..16383.

    A Redis Cluster gives each primary a contiguous slot range, so shards whose slots are
    evenly spaced land on different primaries (shard k in the k-th N-th of the slot space).
    """
    base = f"{prefix}:{shard}"
    if shards == 1:
        return base
    low, high = shard * _SLOTS // shards, (shard + 1) * _SLOTS // shards
    for n in itertools.count():
        tag = f"{base}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard; all share the hash tag ``{prefix:shard}``.

    A task's record, idempotency key and completion channel depend only on its id (which picks
    the shard), so a task can be found from its id alone; each queue has its own stream, due
    set and dead-letter stream inside every shard.
    """

    base: str
    shard: int

    def stream(self, queue: str) -> str:
        return f"{self.base}:q:{queue}:stream"

    def due(self, queue: str) -> str:
        return f"{self.base}:q:{queue}:due"

    def held(self, queue: str) -> str:
        """Sorted set of the tasks callers wait with, scored by their round: the lane's
        workers start them lowest round first (docs/architecture.md#callers)."""
        return f"{self.base}:q:{queue}:held"

    def rounds(self, queue: str) -> str:
        """Hash of caller -> the last round given to one of its held tasks; field '' is the
        round of the task started last."""
        return f"{self.base}:q:{queue}:rounds"

    def dead(self, queue: str) -> str:
        return f"{self.base}:q:{queue}:dead"

    def dead_index(self, queue: str) -> str:
        """Hash of task id -> its entry in `dead(queue)`: a replay by id needs no search."""
        return f"{self.base}:q:{queue}:dead:ids"

    @property
    def channel_prefix(self) -> str:
        return f"{self.base}:done:"

    @property
    def counters(self) -> str:
        """Hash of ``type|outcome`` -> count, for the outcomes stored in this shard."""
        return f"{self.base}:counters"

    @property
    def callbacks(self) -> str:
        """Zset of the task ids whose completion webhook is due (score: when, ms)."""
        return f"{self.base}:callbacks"

    @property
    def callback_counts(self) -> str:
        """Hash of webhook tries by outcome (delivered, retry, failed) in this shard."""
        return f"{self.base}:callbacks:counts"

    @property
    def feed(self) -> str:
        """Stream of this shard's task status changes, every queue's, written by the scripts
        only while it exists: an API process whose admins follow a queue keeps it alive
        (`spillway.feed`)."""
        return f"{self.base}:feed"

    def task(self, task_id: str) -> str:
        return f"{self.base}:task:{task_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.base}:idem:{key}"

    def channel(self, task_id: str) -> str:
        return f"{self.channel_prefix}{task_id}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix, with every queue split over `shards` streams."""

    prefix: str
    shards: int = 1

    def shard(self, shard: int) -> ShardKeys:
        return ShardKeys(f"{{{shard_tag(self.prefix, shard, self.shards)}}}", shard)

    def all_shards(self) -> list[ShardKeys]:
        return [self.shard(k) for k in range(self.shards)]

    def for_task(self, task_id: str) -> ShardKeys:
        return self.shard(shard_of(task_id, self.shards))

    @property
    def queues(self) -> str:
        """Set of every queue name that has been used under this prefix."""
        return f"{self.prefix}:queues"

    @property
    def paused(self) -> str:
        """Set of the queue names an operator paused (workers start none of their tasks).

        Read and written alone, never with another key in one script, so its slot does not
        matter on a cluster; workers read it in the batch of their due-task check."""
        return f"{self.prefix}:paused"

    @property
    def schedules(self) -> str:
        """Hash of each schedule's state (JSON: its newest tick seen, last task, next tick),
        written by the workers that run it (`spillway.broker.schedules`)."""
        return f"{self.prefix}:schedules"

    @property
    def workers(self) -> str:
        """Sorted set of live worker names scored by their last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def limit(self, task_type: str) -> tuple[str, str]:
        """The leases (zset) and rate state of a limited task type; one hash tag, the type's,
        so `lease.lua` touches one slot, wherever the type's tasks are."""
        tag = f"{{{self.prefix}:limit:{task_type}}}"
        return f"{tag}:leases", f"{tag}:rate"

    @property
    def meta(self) -> str:
        """Hash of facts fixed at first use (the shard count)."""
        return f"{self.prefix}:meta"
