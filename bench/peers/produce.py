"""One producer run in its own process: ``python -m bench.peers.produce PEER MODE WORKLOAD N``.

Imports ``bench.peers.<PEER>_peer`` (so task references resolve to that module, as the worker
sees them), runs ``MODES[MODE]`` and prints its figures as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
from collections.abc import Awaitable, Mapping

from bench.peers.driver import Clock, Enqueuer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.produce")
    parser.add_argument("peer")
    parser.add_argument("mode")
    parser.add_argument("workload", choices=["noop", "sleep"])
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    module = importlib.import_module(f"bench.peers.{args.peer}_peer")
    modes: Mapping[str, Enqueuer] = module.MODES
    if args.mode not in modes:
        parser.error(f"{args.peer} has no mode {args.mode!r} (it has {', '.join(modes)})")
    clock = Clock()
    outcome = modes[args.mode](args.workload, args.n, clock)
    if outcome is not None:
        asyncio.run(_wait(outcome))
    print(json.dumps({"seconds": clock.seconds, **clock.extra}))


async def _wait(outcome: Awaitable[None]) -> None:
    await outcome


if __name__ == "__main__":
    main()
