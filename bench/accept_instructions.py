"""Instructions per `POST /tasks` on the accept path's Python, counted by callgrind, A/B.

    python -m bench.accept_instructions [--before 42489a0]

Counts what the direct route costs in Python from `direct_route(scope)` to the rendered 202,
with the broker's write answered at once (no Redis, no protocol): the part issue 16's
refactor rewrote. callgrind counts instructions, so the figure repeats on a busy machine where
wrk's requests/s do not. Each tree runs in its own process (``PYTHONPATH=<tree>/src``) twice
under ``valgrind --tool=callgrind``, with 100 and with 2,100 requests; the difference over
2,000 is the cost per request, start-up excluded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in each tree's process: create the API, stub the write, call the direct route N times.
_PROBE = r"""
import asyncio, os
os.environ.setdefault("SPILLWAY_REDIS_URL", "redis://127.0.0.1:1/0")
from pydantic import BaseModel
import spillway
from spillway import Spillway
from spillway.api.app import create_app

class R(BaseModel):
    url: str
    width: int
    height: int

app = Spillway()

@app.task
async def resize(p: R) -> None:
    return None

api = create_app(app)
body = b'{"type":"resize","payload":{"url":"https://example.com/c.jpg","width":640,"height":480}}'
headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
           (b"content-length", str(len(body)).encode())]

async def main():
    loop = asyncio.get_running_loop()
    if os.path.exists(os.path.join(os.path.dirname(spillway.__file__), "broker", "core.py")):
        from spillway.broker.accept import AcceptWriter
        app.broker.core._checked = True
        def accept(self, r):
            f = loop.create_future(); f.set_result(r.task_id); return f
        AcceptWriter.accept = accept
    else:
        from spillway.broker import AcceptReply, Broker
        app._checked = True
        def accept(self, r):
            f = loop.create_future(); f.set_result(AcceptReply("ok", r.task_id)); return f
        Broker.accept_soon = accept
    for _ in range(int(os.environ["N"])):
        scope = {"type": "http", "method": "POST", "path": "/tasks", "root_path": "",
                 "query_string": b"", "headers": list(headers)}
        answer = api.direct_route(scope)(scope, body)
        if not isinstance(answer, tuple):
            await answer

asyncio.run(main())
"""


def instructions(src: Path, n: int) -> int:
    out = subprocess.run(  # noqa: S603 - our own interpreter under valgrind
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",  # noqa: S607
         sys.executable, "-c", _PROBE],
        env={**os.environ, "PYTHONPATH": str(src), "N": str(n)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accept_instructions")
    parser.add_argument("--before", default="42489a0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],  # noqa: S607
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            for label, src in (("before", before / "src"), ("after", ROOT / "src")):
                per = (instructions(src, 2100) - instructions(src, 100)) / 2000
                print(f"{label}: {per:,.0f} instructions per request")
        finally:
            subprocess.run(  # noqa: S603
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],  # noqa: S607
                check=True, capture_output=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
