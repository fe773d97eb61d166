"""``python -m examples.orders``: both front doors over one throw-away PostgreSQL and Redis.

Starts PostgreSQL (or uses ``SPILLWAY_EXAMPLE_PG_URL``), applies the migrations, starts Redis
(or uses ``SPILLWAY_REDIS_URL``), the Spillway API, a worker and the synchronous API, prints
where they listen, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

from examples.orders import db
from examples.orders.pg import postgres_url
from examples.orders.stack import Stack
from spillway.embedded import EmbeddedRedis


def main() -> None:
    with contextlib.ExitStack() as running:
        pg_url = running.enter_context(postgres_url())
        print(f"PostgreSQL: {pg_url} (migrations applied: {asyncio.run(db.migrate(pg_url))})")
        redis_url = (
            os.environ.get("SPILLWAY_REDIS_URL") or running.enter_context(EmbeddedRedis()).url
        )
        logs = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="orders-")))
        stack = running.enter_context(Stack(pg_url, redis_url, logs))
        spillway, sync = stack.spillway_api(), stack.sync_api()
        stack.worker()
        order = '{"customer_id": 1, "sku": 42, "quantity": 2}'
        post = f"-H 'content-type: application/json' -d '{order}'"
        print(f"Spillway:    curl -si {spillway}/process {post}")
        print(f"synchronous: curl -si {sync}/process {post}")
        print("Ctrl-C stops them all.")
        # SIGTERM too leaves the block, so every process is stopped by its PID.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
