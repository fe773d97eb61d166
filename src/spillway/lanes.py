"""Lanes: the streams a queue is split into by priority, and by task type when it is limited.

A queue ``q`` has three lanes, ``q#high``, ``q`` and ``q#low``; a task type declared with a
concurrency or rate limit gets three of its own, ``q@type#high``, ``q@type`` and
``q@type#low``, so the tasks waiting for a slot wait in their stream, in order, without being
read, and never stand in the way of other types. To Redis and the scripts a lane is a queue
like any other (its stream, due set and dead letters; a task record's ``queue`` field names its
lane), so every script works on lanes unchanged; only the worker's readers know their order.
Queue names cannot contain ``@`` or ``#``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["PRIORITIES", "Lane", "Priority", "lane_name", "lanes_of", "parse_lane", "valid_lane",
           "valid_queue"]  # fmt: skip

Priority = Literal["high", "default", "low"]
#: The levels, highest first.
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")

_QUEUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Lane:
    """What a lane's name says: its queue, priority and limited type (None: unlimited)."""

    queue: str
    priority: Priority
    limited_type: str | None


def lane_name(queue: str, priority: Priority = "default", limited_type: str | None = None) -> str:
    name = queue if limited_type is None else f"{queue}@{limited_type}"
    return name if priority == "default" else f"{name}#{priority}"


def parse_lane(name: str) -> Lane:
    """The parts of a lane's name; a plain queue name is its own default lane."""
    priority: Priority = "default"
    for level in ("high", "low"):
        if name.endswith("#" + level):
            name, priority = name[: -len(level) - 1], level
            break
    queue, at, limited = name.partition("@")
    return Lane(queue, priority, limited if at else None)


def valid_lane(name: str) -> bool:
    """Whether `name` is a lane Spillway could have written (a queue name read back from Redis
    is untrusted)."""
    lane = parse_lane(name)
    return bool(_QUEUE.fullmatch(lane.queue)) and lane.limited_type != ""


def valid_queue(name: object) -> bool:
    """Whether `name` is a queue name (not a lane's: no ``#`` or ``@``)."""
    return isinstance(name, str) and bool(_QUEUE.fullmatch(name))


def lanes_of(queue: str, limited_type: str | None = None) -> list[str]:
    """The lanes of a queue (or of one limited type in it), highest priority first."""
    return [lane_name(queue, p, limited_type) for p in PRIORITIES]
