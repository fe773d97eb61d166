"""`Broker`: the one boundary to Redis, composed of its parts over one shared core.

* `accepts` (`spillway.broker.accept`): validate and write tasks (``accept.lua``);
* `work` (`spillway.broker.work`): what a worker reads, begins, finishes and renews;
* `admin` (`spillway.broker.admin`): a task's record, waiting, cancelling, dead letters, stats;
* `limits` (`spillway.broker.limits`): the slots and start tokens of limited task types;
* `pauses` (`spillway.broker.pauses`): the queues an operator paused;
* `schedules` (`spillway.broker.schedules`): each schedule's state;
* `sweep` (`spillway.broker.sweep`): pages of the tasks waiting in some lanes (bulk cancel);
* `drain` (`spillway.broker.drain`): the drain-rate samples behind each ``Retry-After``;
* `callbacks` (`spillway.broker.callbacks`): the completion webhooks due, claimed and settled;
* `feed` (`spillway.broker.feed`): each shard's feed of status changes, kept alive and read.

Each holds the same `RedisCore` (`spillway.broker.core`): the clients, scripts, key names and
error mapping. The API, the workers and the CLI call only these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spillway.broker.accept import AcceptWriter
from spillway.broker.admin import Admin
from spillway.broker.callbacks import CallbackOps
from spillway.broker.core import RedisCore
from spillway.broker.drain import DrainSampler
from spillway.broker.feed import FeedOps
from spillway.broker.limits import LimitOps
from spillway.broker.pauses import PauseOps
from spillway.broker.schedules import ScheduleOps
from spillway.broker.sweep import Sweep
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
        self.limits = LimitOps(self.core)
        self.pauses = PauseOps(self.core)
        self.schedules = ScheduleOps(self.core)
        self.sweep = Sweep(self.core)
        self.callbacks = CallbackOps(self.core)
        self.feed = FeedOps(self.core)
        #: Samples the drain rate for the accept writer's pacer; the API starts it.
        self.drain = DrainSampler(self.core, self.accepts.pacer)
        # What most callers (and tests) want of the core, without the extra hop.
        self.settings = settings
        self.keys = self.core.keys
        self.client = self.core.client

    async def ready(self) -> None:
        """Check the server and create the consumer groups, once; see `RedisCore.check_server`."""
        await self.core.ready()

    async def close(self) -> None:
        await self.drain.stop()
        await self.admin.close()
        await self.core.close()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
