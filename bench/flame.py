"""py-spy flame graphs of the accept path and of the worker loop, kept in docs/.

    python -m bench.flame [--seconds 8] [--no-write]

Accept path: Spillway's API (`spillway.api.serve`, 2 processes) under wrk (64 connections),
sampled by py-spy across its worker processes -> docs/flame-accept.svg. Worker loop: ONE
worker process (`--concurrency 200`) draining a backlog of no-op tasks -> docs/flame-worker.svg.
py-spy samples without pausing the processes (``--nonblocking``) and records only threads
that are running. Alongside each SVG it takes a second, raw recording of the same window and
reports the share of samples in the main parts of the path. Needs py-spy (the bench
dependency group) and permission to ptrace the processes it started (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import DOC, ROOT, Report, machine, standalone
from bench.drain import APP as DRAIN_APP
from bench.drain import build_app
from bench.http.run import PAYLOAD, spillway_server, started, wrk
from spillway import Settings
from spillway.embedded import EmbeddedRedis

__all__ = ["TITLE", "run"]

TITLE = "Flame graphs"
DOCS = ROOT / "docs"
BACKLOG = 200_000
NATIVE = "native code: uvloop, C extensions, system calls"
OTHER = "other Python: our code outside the parts above, asyncio, library glue"
# Where the samples of each path go: the first part with a marker in any frame of a sample's
# stack ("leaf:" markers: in its innermost frame only, for wrappers such as metrics.timed_run).
ACCEPT_PARTS = {
    "validate + serialise (pydantic, orjson)": ("AcceptWriter.prepare", "model_validate"),
    "write to Redis (coalesced pipeline, redis-py, hiredis)": ("AcceptWriter._flush",),
    "read the body, parse JSON": ("read_body", "parse_json"),
    "answer (the protocol writes it; ASGI send for the others)": (
        "write_answer",
        "send_rendered",
    ),
    "metrics": ("accept_answered", "task_accepted"),
    # Last: the direct routes run the parts above from the parser's callbacks.
    "read the request (the protocol: httptools and its callbacks)": ("data_received",),
}
WORKER_PARTS = {
    "run the handlers (validate the payload, call)": ("TaskDef.call", "TaskDef.validate"),
    "metrics (prometheus_client)": ("leaf:spillway/metrics.py", "leaf:prometheus_client"),
    "begin (claim script)": ("WorkerOps.begin",),
    "finish (store the outcome, ack)": ("WorkerOps.finish",),
    "read deliveries (XREADGROUP)": ("WorkerOps.read",),
    "asyncio: creating tasks, per-task timeouts": ("create_task", "Timeout.", "_set_task_name"),
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: `uv sync --group bench` (or pip install py-spy)")
    return found


def record(pid: int, seconds: float, out: Path, fmt: str, subprocesses: bool) -> None:
    command = [
        py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--nonblocking", "--format", fmt, "--output", str(out),
    ]  # fmt: skip
    if subprocesses:
        command.append("--subprocesses")
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603 - our own argv


def record_both(pid: int, seconds: float, svg: Path, subprocesses: bool) -> Path:
    """An SVG for the docs and a raw recording of the same window (returned) for the shares."""
    raw = Path(tempfile.mkdtemp(prefix="spillway-flame-")) / f"{svg.stem}.txt"
    threads = [
        threading.Thread(target=record, args=(pid, seconds, out, fmt, subprocesses))
        for out, fmt in ((svg, "flamegraph"), (raw, "raw"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return raw


_ENTRY_FRAMES = (
    "subprocess_started",
    "Server.run",
    "run_until_complete",
    "Runner.run",
    "run_worker",
    "uvloop",
)


def _marked(frames: list[str], marker: str) -> bool:
    if marker.startswith("leaf:"):
        return marker[5:] in frames[-1]
    return any(marker in f for f in frames)


def shares(raw: Path, parts: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Share of the samples of the app's processes spent in each part.

    A sample whose innermost Python frame is the entry point (uvicorn's server process, the
    event loop's run) was running native code below it: uvloop, system calls.
    """
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not any(m in f for f in frames for m in ("subprocess_started", "run_worker")):
            continue  # uvicorn's parent process
        total += int(n)
        for name, markers in parts.items():
            if any(_marked(frames, m) for m in markers):
                counts[name] += int(n)
                break
        else:
            native = any(m in frames[-1] for m in _ENTRY_FRAMES)
            counts[NATIVE if native else OTHER] += int(n)
    return {k: v / total for k, v in counts.most_common()} if total else {}


def accept_flame(seconds: float, log_dir: Path) -> dict[str, float]:
    body = json.dumps({"type": "resize", "payload": PAYLOAD}).encode()
    with EmbeddedRedis(appendonly=True) as server:
        api = spillway_server(server.url, 2)
        with started([api], log_dir):
            assert api.process is not None  # noqa: S101 - started() started it
            wrk(api.url + "/tasks", body, 2, 64)  # warm-up
            load = threading.Thread(target=wrk, args=(api.url + "/tasks", body, seconds + 3, 64))
            load.start()
            time.sleep(1)
            raw = record_both(api.process.pid, seconds, DOCS / "flame-accept.svg", True)
            load.join()
    return shares(raw, ACCEPT_PARTS)


def worker_flame(seconds: float) -> dict[str, float]:
    with EmbeddedRedis(appendonly=True) as server:
        asyncio.run(_fill(server.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        env |= {"PYTHONPATH": str(ROOT), "SPILLWAY_REDIS_URL": server.url}
        env["SPILLWAY_PREFIX"] = "bench-drain"
        command = [
            sys.executable, "-m", "spillway", "worker", DRAIN_APP, "--burst",
            "--concurrency", "200", "--log-level", "warning",
        ]  # fmt: skip
        worker = subprocess.Popen(command, env=env, cwd=ROOT)  # noqa: S603 - our own argv
        try:
            time.sleep(2)  # imports and start-up, out of the picture
            raw = record_both(worker.pid, seconds, DOCS / "flame-worker.svg", False)
        finally:
            worker.terminate()
            worker.wait(30)
    return shares(raw, WORKER_PARTS)


async def _fill(url: str) -> None:
    async with build_app(Settings(redis_url=url, prefix="bench-drain")) as app:
        for first in range(0, BACKLOG, 1000):
            await app.enqueue_many([("noop", i) for i in range(first, first + 1000)])


def run(args: argparse.Namespace | None = None) -> Report:
    """Record both flame graphs; the section for docs/benchmarks.md."""
    args = args or parser().parse_args([])
    py_spy()
    log_dir = Path(tempfile.mkdtemp(prefix="spillway-bench-flame-"))
    print("accept path: the API under wrk, sampled by py-spy", flush=True)
    accept = accept_flame(args.seconds, log_dir)
    print("worker loop: one worker draining a backlog, sampled by py-spy", flush=True)
    worker = worker_flame(args.seconds)

    def table(found: dict[str, float]) -> list[str]:
        return ["| part | share of samples |", "| --- | ---: |"] + [
            f"| {name} | {share:.0%} |" for name, share in found.items()
        ]

    markdown = "\n".join(
        [
            "py-spy samples (250 a second, without pausing the processes, running threads "
            f"only) over {args.seconds:g} s. Open the SVGs in a browser to zoom in.",
            "",
            "**The accept path**: Spillway's API (2 processes) under wrk, 64 connections, "
            "`POST /tasks`: [flame-accept.svg](flame-accept.svg).",
            "",
            *table(accept),
            "",
            "**The worker loop**: one worker process (`--concurrency 200`) draining a backlog "
            "of no-op tasks: [flame-worker.svg](flame-worker.svg).",
            "",
            *table(worker),
            "",
            "py-spy sees Python frames: time in native code shows under the Python frame "
            "that called it, so the SVGs show the native share as the width of the entry "
            "frames (uvicorn's server process, the event loop's run) with nothing above them.",
            "",
            "- Command: `python -m bench.flame` (`make bench` runs it as "
            "`python -m bench.run flame`); needs py-spy (bench dependency group).",
            f"- Measured: {machine()}; the machine is shared with other work.",
        ]
    )
    summary = "accept: " + ", ".join(f"{k} {v:.0%}" for k, v in accept.items())
    summary += "\nworker: " + ", ".join(f"{k} {v:.0%}" for k, v in worker.items())
    return Report(TITLE, summary, markdown)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flame",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds sampled per graph")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
