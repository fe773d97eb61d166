"""`Batch`: script calls collected for one round trip, and `Sender`, what sends one.

Two kinds of sender exist (see `spillway.broker.senders`): the fast ones, built on redis-py's
internals (`spillway.broker.redispy_wire`), and the stock ones, on its public pipelines. Both
keep one contract: one reply per command, in order; error replies as exception objects in
their place (a `NoScriptError` where a script is missing); transport failures raised; a
trailing WAIT checked and stripped; `batch.sent` set once the commands may have reached Redis.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

__all__ = ["Batch", "Sender"]

log = logging.getLogger("spillway.broker")


class Batch:
    """Commands collected for one round trip.

    `sent` tells whether any of them may have been written to a connection: if the round
    trip then fails (a timeout, a broken connection), Redis may have run them.
    """

    def __init__(self, wait_replicas: int = 0, wait_ms: int = 0) -> None:
        self.commands: list[list[Any]] = []
        self.sent = False
        # WAIT for this many replicas after the batch (0: answer as soon as the primary has it).
        self.wait: list[Any] | None = ["WAIT", wait_replicas, wait_ms] if wait_replicas else None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(["EVALSHA", sha, numkeys, *keys_and_args])

    def indices(self, only: list[int] | None) -> list[int]:
        """The indices of the commands to send: `only`, or all of them."""
        return list(range(len(self.commands))) if only is None else only

    def first_key(self, i: int) -> str:
        """The first key of command `i` (on a cluster, its slot says where it goes)."""
        command = self.commands[i]
        return str(command[3] if command[0] == "EVALSHA" else command[1])

    def strip_wait(self, replies: list[Any]) -> list[Any]:
        """The replies without the trailing WAIT's, which is checked: too few replicas is
        logged (the commands did run on the primary)."""
        if self.wait:
            acked = replies.pop()
            if not isinstance(acked, int) or acked < int(self.wait[1]):
                log.warning("WAIT: %s of %s replicas acknowledged the batch", acked, self.wait[1])
        return replies


class Sender(Protocol):
    """Sends batches to one Redis server or cluster (see the module docstring's contract)."""

    async def send(self, batch: Batch, only: list[int] | None = None) -> list[Any]:
        """The replies to the batch's commands (or those at the indices `only`), in order."""
        ...

    async def close(self) -> None:
        """Close what the sender opened itself (not the client it was given)."""
        ...
