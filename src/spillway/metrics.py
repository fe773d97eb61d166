"""Prometheus metrics: what each process counts, and the queue figures Redis holds.

Two kinds of figures, from two places:

* **Events**, counted where they happen: tasks accepted and refused (API processes), started,
  succeeded, failed, retried and dead-lettered (worker processes), and the accept, run and
  queue-wait histograms. Each process records them with `prometheus_client`. When
  ``PROMETHEUS_MULTIPROC_DIR`` is set, every process writes its values to files in that
  directory and any endpoint reading the directory reports their sum, so several server
  workers behind one port, or a supervisor's worker processes, add up instead of answering
  with whichever process the scrape reached. `spillway api`, `spillway worker --processes P`
  and `spillway dev` create a private directory for their processes when it is unset (see
  `private_multiproc_dir`); counts of a process that exited stay in it.
* **State**, read from Redis at scrape time by ``GET /metrics`` of the API: per queue the
  backlog (stream entries: waiting plus delivered-but-unfinished, entries are deleted when
  finished), pending (the consumer groups' pending-entries lists), delayed (the due sets) and
  dead letters, plus live workers and their in-flight tasks from the heartbeats. Every API
  instance reports the same fleet-wide values: aggregate them with ``max``, not ``sum``.

Worker events reach Prometheus through the worker's own endpoint (`spillway worker
--metrics-port PORT`, served by the supervisor for all its processes; on loopback unless
``--metrics-host`` says otherwise, and with a key when API keys are set), pulled like any
other target; under `spillway dev` the API and the worker share one directory, so ``/metrics`` and
the dashboard of the API show both.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from spillway import prometheus_multiproc
from spillway.lanes import parse_lane
from spillway.records import Stats

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "Admit",
    "HistogramSnapshot",
    "accept_answered",
    "callback_delivered",
    "histograms",
    "private_multiproc_dir",
    "render",
    "run_ended",
    "run_started",
    "serve",
    "task_accepted",
    "task_finished",
    "task_refused",
    "tasks_started",
    "totals",
    "use_fast_path",
]

MULTIPROC_ENV = prometheus_multiproc.MULTIPROC_ENV
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Accepting takes well under a millisecond: the buckets start at 100 us.
_ACCEPT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)  # fmt: skip
_RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 300.0)  # fmt: skip
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                 3600.0)  # fmt: skip
_OUTCOMES = {
    "succeeded": "succeeded", "retry": "retried", "dead": "dead_lettered", "cancelled": "cancelled",
}  # fmt: skip


class _Metrics:
    """The process's metric objects, with their label children cached for the hot paths."""

    def __init__(self, fast: bool) -> None:
        # Built on first use, not at import: the values (in memory, or files in the
        # multiprocess directory) must follow the environment of the process that records.
        prometheus_multiproc.follow_environment(fast=fast)
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "spillway_tasks_accepted", "Tasks answered 202 by the API.", ["type"], registry=r
        )
        self.refused = Counter(
            "spillway_tasks_refused",
            "Accept requests answered with an error, by problem type (a refused batch counts "
            "once; refused items of a batch count one each).",
            ["reason"],
            registry=r,
        )
        self.accept_seconds = Histogram(
            "spillway_accept_duration_seconds",
            "Server time to answer an accept request, by route.",
            ["route"],
            buckets=_ACCEPT_BUCKETS,
            registry=r,
        )
        self.started = Counter(
            "spillway_tasks_started", "Task runs started by workers.", ["type"], registry=r
        )
        self.outcomes = {
            kind: Counter(
                f"spillway_tasks_{name}",
                f"Task runs that ended {name.replace('_', ' ')}.",
                ["type"],
                registry=r,
            )
            for kind, name in _OUTCOMES.items()
        }
        self.failed = Counter(
            "spillway_tasks_failed",
            "Task runs that failed (retried or dead-lettered).",
            ["type"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "spillway_task_run_duration_seconds",
            "Seconds a task run took, payload validation and handler included.",
            ["type"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.wait_seconds = Histogram(
            "spillway_task_queue_wait_seconds",
            "Seconds from acceptance to the first attempt's start (requested delays included).",
            ["type"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            "spillway_callback_deliveries",
            "Completion webhook deliveries tried, by outcome: delivered (a 2xx), retry (to be "
            "tried again) or failed (retries ran out, or the URL is refused).",
            ["outcome"],
            registry=r,
        )
        self.children: dict[tuple[str, str], Any] = {}

    def child(self, metric: Counter | Histogram, key: str, label: str) -> Any:
        found = self.children.get((key, label))
        if found is None:
            found = self.children[(key, label)] = metric.labels(label)
        return found


_current: _Metrics | None = None
_fast_path = True


def use_fast_path(enabled: bool) -> None:
    """SPILLWAY_FAST_PATH for this process's metrics, before their first use (see
    `spillway.prometheus_multiproc`)."""
    global _fast_path
    _fast_path = enabled


def _metrics() -> _Metrics:
    # One set per process, like prometheus_client's own default registry: the values belong
    # to the process, whichever application objects record them.
    global _current
    if _current is None:
        _current = _Metrics(_fast_path)
    return _current


# --- recording ----------------------------------------------------------------------------------


def task_accepted(task_type: str) -> None:
    """One task answered 202."""
    m = _metrics()
    m.child(m.accepted, "accepted", task_type).inc()


def task_refused(problem_type: str) -> None:
    """One accept request (or batch item) refused, by its problem document's ``type``."""
    reason = re.split(r"[:/]", problem_type)[-1] or "unknown"
    m = _metrics()
    m.child(m.refused, "refused", reason).inc()


def accept_answered(route: str, status: int, body: bytes, seconds: float) -> None:
    """An accept route answered: observe its latency, count a refusal by its problem type."""
    m = _metrics()
    m.child(m.accept_seconds, "accept", route).observe(seconds)
    if status >= 400:
        # Problem documents start {"type":"urn:spillway:problem:<slug>",...}.
        start = body.find(b'"type":"') + 8
        end = body.find(b'"', start) if start >= 8 else -1
        task_refused(body[start:end].decode("ascii", "replace") if end >= 0 else "unknown")


def tasks_started(task_type: str, count: int) -> None:
    """`count` runs of `task_type` began (counted once per batch the worker began)."""
    m = _metrics()
    m.child(m.started, "started", task_type).inc(count)


def run_started(task_type: str, attempt: int, created_at_ms: int) -> float:
    """A run begins: observe a first attempt's queue wait; the time to pass to `run_ended`."""
    if attempt == 1 and created_at_ms:
        m = _metrics()
        waited = max(0.0, time.time() - created_at_ms / 1000)
        m.child(m.wait_seconds, "wait", task_type).observe(waited)
    return time.perf_counter()


def run_ended(task_type: str, started: float) -> None:
    """A run that began at `started` (`run_started`) has its outcome: observe its run time."""
    m = _metrics()
    m.child(m.run_seconds, "run", task_type).observe(time.perf_counter() - started)


def task_finished(task_type: str, kind: str, count: int = 1) -> None:
    """`count` runs' outcomes were stored: `kind` is succeeded, retry, dead or cancelled."""
    m = _metrics()
    counter = m.outcomes.get(kind)
    if counter is not None:
        m.child(counter, kind, task_type).inc(count)
    if kind in ("retry", "dead"):
        m.child(m.failed, "failed", task_type).inc(count)


def callback_delivered(outcome: str) -> None:
    """One webhook delivery was tried and settled: delivered, retry or failed."""
    m = _metrics()
    m.child(m.callbacks, "callback", outcome).inc()


# --- exposing -----------------------------------------------------------------------------------


def _source() -> CollectorRegistry:
    """The registry to read: this process's, or every process's in the multiprocess directory."""
    m = _metrics()
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return m.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


class _StateCollector(Collector):
    """Fleet-wide figures from one `Stats` read (None: Redis did not answer)."""

    def __init__(self, stats: Stats | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("spillway_broker_up", "1 if Redis answered this scrape.")
        up.add_metric([], 0 if self.stats is None else 1)
        yield up
        if self.stats is None:
            return
        s = self.stats
        for field, help_text in (
            ("backlog", "Stream entries: tasks waiting plus delivered but not finished."),
            ("pending", "Tasks delivered to a worker and not yet acknowledged."),
            ("delayed", "Tasks waiting for their due time (delay or retry backoff)."),
            ("dead", "Entries in the dead-letter streams."),
        ):
            name = "spillway_queue_dead_letters" if field == "dead" else f"spillway_queue_{field}"
            family = GaugeMetricFamily(name, help_text, labels=["queue"])
            for q in s.queues:
                family.add_metric([q.queue], getattr(q, field))
            yield family
        paused = GaugeMetricFamily(
            "spillway_queue_paused",
            "1 if an operator paused the queue: it accepts tasks, workers start none.",
            labels=["queue"],
        )
        for queue in sorted({parse_lane(q.queue).queue for q in s.queues} | set(s.paused)):
            paused.add_metric([queue], 1 if queue in s.paused else 0)
        yield paused
        for name, help_text, value in (
            ("spillway_limit_running", "Runs of a limited type under way (slots held).", "running"),
            ("spillway_limit_waiting", "Tasks of a limited type waiting for a slot.", "waiting"),
            ("spillway_limit_concurrency", "A limited type's concurrency limit.", "concurrency"),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["type"])
            for limit in s.limits:
                figure = getattr(limit, value)
                if figure is not None:
                    family.add_metric([limit.type], figure)
            yield family
        live = GaugeMetricFamily("spillway_workers_live", "Workers with a recent heartbeat.")
        live.add_metric([], len(s.workers))
        yield live
        busy = GaugeMetricFamily(
            "spillway_workers_tasks_in_flight", "Tasks live workers hold, as of their heartbeat."
        )
        busy.add_metric([], sum(w.in_flight for w in s.workers))
        yield busy
        stored = CounterMetricFamily(
            "spillway_outcomes_stored",
            "Outcomes stored in Redis by all workers, by task type and outcome.",
            labels=["type", "outcome"],
        )
        for task_type, per_kind in sorted(s.counts.items()):
            for kind, n in sorted(per_kind.items()):
                stored.add_metric([task_type, _OUTCOMES.get(kind, kind)], n)
        yield stored


def render(stats: Stats | None) -> bytes:
    """The API's exposition text: the events of this process (or of every process writing to
    the multiprocess directory), then the fleet-wide state from `stats` (None: Redis is down)."""
    state = CollectorRegistry(auto_describe=True)
    state.register(_StateCollector(stats))
    return generate_latest(_source()) + generate_latest(state)


#: Whether a scrape may read the metrics, given its request headers (lowercase names).
Admit = Callable[[list[tuple[bytes, bytes]]], bool]

_REFUSED = (
    b'{"type":"urn:spillway:problem:unauthorized","title":"Unauthorized","status":401,'
    b'"detail":"an API key is required"}'
)


def serve(port: int, host: str = "127.0.0.1", admit: Admit | None = None) -> WSGIServer:
    """Serve the metrics of this process (or its multiprocess directory) from a thread,
    on loopback unless `host` says otherwise; with `admit`, a scrape it refuses gets 401.

    prometheus-client's own ``start_http_server`` has no way to refuse a request, so its
    public WSGI application is served here, behind `admit`.
    """
    metrics_app = make_wsgi_app(_source())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if admit is not None and not admit(_headers(environ)):
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "application/problem+json"),
                    ("WWW-Authenticate", 'Bearer realm="spillway"'),
                ],
            )
            return [_REFUSED]
        answer: Iterable[bytes] = metrics_app(environ, start_response)
        return answer

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = _MetricsServer6 if family == socket.AF_INET6 else _MetricsServer
    server = make_server(host, port, app, server_class, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, none of which keeps the process alive."""

    daemon_threads = True


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _headers(environ: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """A WSGI request's headers as ASGI spells them (what `spillway.api.auth` reads)."""
    return [
        (name[5:].lower().replace("_", "-").encode("latin-1"), value.encode("latin-1"))
        for name, value in environ.items()
        if name.startswith("HTTP_") and isinstance(value, str)
    ]


@contextlib.contextmanager
def private_multiproc_dir() -> Iterator[str]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory for this process and its
    children, unless it is set already; removed on exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    path = tempfile.mkdtemp(prefix="spillway-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


# --- reading back (the dashboard) ---------------------------------------------------------------


HistogramSnapshot = dict[str, Any]


def totals() -> dict[str, float]:
    """Counter totals summed over their labels, e.g. ``{"spillway_tasks_accepted": 12.0}``."""
    out: dict[str, float] = {}
    for family in _source().collect():
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[family.name] = out.get(family.name, 0.0) + sample.value
    return out


def histograms() -> dict[str, HistogramSnapshot]:
    """Each histogram summed over its labels: cumulative bucket counts, count and sum."""
    out: dict[str, HistogramSnapshot] = {}
    for family in _source().collect():
        if family.type != "histogram":
            continue
        buckets: dict[float, float] = {}
        count = total = 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
        bounds = sorted(buckets)
        out[family.name] = {
            "le": [b if b != float("inf") else None for b in bounds],
            "counts": [buckets[b] for b in bounds],
            "count": count,
            "sum": total,
        }
    return out
