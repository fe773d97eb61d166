"""`Broker`: the one boundary to Redis, composed of its three parts over one shared core.

* `accepts` (`spillway.broker.accept`): validate and write tasks (``accept.lua``);
* `work` (`spillway.broker.work`): what a worker reads, begins, finishes and renews;
* `admin` (`spillway.broker.admin`): a task's record, waiting, cancelling, dead letters, stats.

Each holds the same `RedisCore` (`spillway.broker.core`): the clients, scripts, key names and
error mapping. The API, the workers and the CLI call only these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spillway.broker.accept import AcceptWriter
from spillway.broker.admin import Admin
from spillway.broker.core import RedisCore
from spillway.broker.work import WorkerOps
from spillway.settings import Settings

__all__ = ["Broker"]


class Broker:
    """Redis for one application: its settings and the queues its tasks use."""

    def __init__(
        self, settings: Settings, queues: Callable[[], Sequence[str]] = lambda: ["default"]
    ) -> None:
        self.core = RedisCore(settings, queues)
        self.accepts = AcceptWriter(self.core)
        self.work = WorkerOps(self.core)
        self.admin = Admin(self.core)
        # What most callers (and tests) want of the core, without the extra hop.
        self.settings = settings
        self.keys = self.core.keys
        self.client = self.core.client

    async def ready(self) -> None:
        """Check the server and create the consumer groups, once; see `RedisCore.check_server`."""
        await self.core.ready()

    async def close(self) -> None:
        await self.admin.close()
        await self.core.close()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
