"""A throw-away PostgreSQL server for the orders example, its test and the story benchmark.

:func:`find_postgres` finds Debian's binaries (``/usr/lib/postgresql/N/bin``, which are not on
``PATH``; ``make postgresql`` installs them). :class:`ThrowawayPostgres` runs ``initdb`` and then
``postgres`` itself (not ``pg_ctl``, so the PID we stop is the server's own) on a free loopback
port, with its socket and data in one temporary directory, stops it by that PID and removes the
directory. ``SPILLWAY_EXAMPLE_PG_URL`` names a server to use instead (:func:`postgres_url`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["URL_VARIABLE", "PostgresError", "ThrowawayPostgres", "find_postgres", "postgres_url"]

URL_VARIABLE = "SPILLWAY_EXAMPLE_PG_URL"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# PostgreSQL refuses to run as root; Debian's package creates this account for it.
_ROOT_RUNS_AS = "postgres"


class PostgresError(RuntimeError):
    """PostgreSQL's binaries are missing, or the server did not start."""


def find_postgres() -> Path:
    """The directory holding ``initdb`` and ``postgres``: the newest Debian version's."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return bin_dir
    on_path = shutil.which("postgres")  # other systems put it on PATH
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresError(
        "PostgreSQL's server binaries were not found in /usr/lib/postgresql/*/bin or on PATH: "
        f"run `make postgresql` (Debian's postgresql package), or set {URL_VARIABLE}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayPostgres:
    """A ``postgres`` child process on 127.0.0.1 with trust authentication, in a temp dir.

    `settings` are extra server settings (``-c name=value``); `max_connections` defaults to
    200 so that both designs' pools and the benchmark's sampler fit with room to spare.
    """

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self.settings = {"max_connections": "200", **(settings or {})}
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = _ROOT_RUNS_AS if os.geteuid() == 0 else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise PostgresError("the throw-away PostgreSQL is not running")
        return self._process.pid

    def start(self) -> Self:
        """initdb, start the server, and return once it accepts connections."""
        bin_dir = find_postgres()
        self._dir = Path(tempfile.mkdtemp(prefix="spillway-pg-"))
        _live.add(self)
        try:
            if self._user is not None:
                account = pwd.getpwnam(self._user)
                os.chown(self._dir, account.pw_uid, account.pw_gid)
            self._run(
                str(bin_dir / "initdb"), "-D", str(self._data), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
            )  # fmt: skip
            self._launch(bin_dir / "postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown) and remove its directory. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown: it ends sessions and exits cleanly.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        _live.discard(self)

    @property
    def dir(self) -> Path:
        """The server's directory (data, socket, log); removed by :meth:`stop`."""
        if self._dir is None:
            raise PostgresError("the throw-away PostgreSQL has not been started")
        return self._dir

    @property
    def _data(self) -> Path:
        return self.dir / "data"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(  # noqa: S603 - our own argv, no shell
            argv, user=self._user, capture_output=True, text=True, check=False, cwd=self._dir
        )
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")

    def _launch(self, postgres: Path) -> None:
        options = {
            **self.settings,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
        }
        # A port picked free can be taken before the server binds it: pick again a few times.
        for attempt in range(3):
            self.port = _free_port()
            argv = [str(postgres), "-D", str(self._data), "-p", str(self.port)]
            for name, value in options.items():
                argv += ["-c", f"{name}={value}"]
            with (self.dir / "server.log").open("ab") as log:
                self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                    argv,
                    user=self._user,
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop it last
                )
            if self._wait_until_ready(self._process):
                return
            if attempt == 2 or "already in use" not in self._log():
                raise PostgresError(f"postgres did not start:\n{self._log()}")

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> bool:
        # postmaster.pid's last line turns to "ready" once the server accepts connections.
        pid_file = self._data / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[0] == str(process.pid) and lines[7].strip() == "ready":
                    return True
            time.sleep(0.02)
        process.kill()
        process.wait()
        return False

    def _log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """``SPILLWAY_EXAMPLE_PG_URL`` if set, else a throw-away server's URL while in the block."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    with ThrowawayPostgres() as server:
        yield server.url


_live: set[ThrowawayPostgres] = set()


@atexit.register
def _stop_all() -> None:
    # Safety net for a parent that exits without stopping its servers (a crashed test session).
    for server in list(_live):
        server.stop()
