"""OpenTelemetry spans for a task's life: one trace from the request that submits it to each
attempt that runs it (docs/tracing.md).

Optional (``pip install spillway[otel]``). `Tracing.start` turns it on when opentelemetry-api
is installed, SPILLWAY_TRACING is on (the default), and a tracer provider is configured: the
SDK's global one, or the one passed as ``Spillway(tracer_provider=...)``. Otherwise `enabled`
stays False and each caller tests it before anything else, so tracing costs one attribute
test per task (docs/benchmarks.md#tracing).

What a trace holds, named by OpenTelemetry's messaging conventions:

* ``send <queue>`` (PRODUCER): the enqueue, from `Spillway.enqueue` or an accept route; a
  child of the caller's context (the request's ``traceparent``, or the current span). Its
  context goes into the task's record as a W3C ``traceparent`` (the ``trace`` field).
* ``process <queue>`` (CONSUMER): each attempt, a child of that context and linked to it. A
  retry, a dead letter or a cancellation is an event on it; a failure is its status and an
  ``exception`` event. What the record's field holds is untrusted: anything but a well-formed
  ``traceparent`` starts a trace of its own.
* ``wait`` (INTERNAL): `Spillway.wait`, with the status it saw.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from importlib.metadata import version
from typing import Any

from spillway.broker import AcceptRequest, Outcome, Started
from spillway.lanes import parse_lane

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing stays off
    _INSTALLED = False
else:
    _INSTALLED = True
    #: The record's format, whatever propagators the application configured for HTTP.
    _W3C = TraceContextTextMapPropagator()

__all__ = ["Tracing"]

#: The messaging system's name in every span (messaging.system).
SYSTEM = "spillway"
#: What the record's field may hold: a version-00 W3C traceparent, nothing else.
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: The headers an incoming request's context may come in, as the ASGI scope spells them
#: (W3C trace context, baggage, and B3 for a propagator configured that way).
_CONTEXT_HEADERS = frozenset(
    {b"traceparent", b"tracestate", b"baggage", b"b3", b"x-b3-traceid", b"x-b3-spanid",
     b"x-b3-sampled", b"x-b3-parentspanid", b"x-b3-flags"}
)  # fmt: skip
#: Longest error text an event or a status carries (the record keeps the whole of it).
_TEXT = 1024


class Tracing:
    """One application's tracer, or nothing while `enabled` is False."""

    def __init__(self, provider: Any = None) -> None:
        self.enabled = False
        self._provider = provider
        self._tracer: Any = None

    def start(self, wanted: bool) -> None:
        """Turn tracing on if it is `wanted`, installed and configured (at connect)."""
        if self.enabled or not wanted or not _INSTALLED:
            return
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return  # nothing configured: every span would be dropped
        self._tracer = provider.get_tracer("spillway", version("spillway"))
        self.enabled = True

    # --- send ----------------------------------------------------------------------------------

    def send(
        self,
        queue: str,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
        count: int = 1,
    ) -> Span:
        """Start a send span: a child of the context `headers` carry (an HTTP request's, as
        the ASGI scope holds them), else of the current one. `queue` '' for a batch."""
        parent = None
        if headers is not None:
            carrier = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in headers
                if k in _CONTEXT_HEADERS
            }
            parent = propagate.extract(carrier)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
        }
        name = "send"  # a batch's tasks may go to several queues
        if queue:
            destination = parse_lane(queue).queue
            name = f"send {destination}"
            attributes["messaging.destination.name"] = destination
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        span: Span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        return span

    def carry(self, span: Span, request: AcceptRequest) -> AcceptRequest:
        """`request`, carrying `span`'s context to its record (and so to its worker)."""
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, trace.set_span_in_context(span))
        return replace(request, trace=carrier.get("traceparent", ""))

    def sent(self, span: Span, error: BaseException | None = None, task_id: str = "") -> None:
        """End a send span: the task's id (a duplicate's is its first task's), or why not."""
        if task_id:
            span.set_attribute("messaging.message.id", task_id)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:_TEXT]))
        span.end()

    async def enqueue(
        self, request: AcceptRequest, accept: Callable[[AcceptRequest], Awaitable[str]]
    ) -> str:
        """`accept(request)` under a send span that the task carries."""
        span = self.send(request.queue)
        try:
            task_id = await accept(self.carry(span, request))
        except BaseException as exc:
            self.sent(span, exc)
            raise
        self.sent(span, task_id=task_id)
        return task_id

    # --- process -------------------------------------------------------------------------------

    async def process(self, s: Started, run: Awaitable[Outcome]) -> Outcome:
        """Await one attempt (`run`) under its process span: the current span while the
        handler runs, so the handler's own spans are its children."""
        parent = None
        links = []
        if _TRACEPARENT.fullmatch(s.trace):
            parent = _W3C.extract({"traceparent": s.trace})
            sent = trace.get_current_span(parent).get_span_context()
            if sent.is_valid:
                links.append(Link(sent))
            else:
                parent = None
        d = s.delivery
        queue = parse_lane(d.queue).queue
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "run",
            "messaging.destination.name": queue,
            "messaging.message.id": d.task_id,
            "messaging.consumer.group.name": "workers",
            "spillway.task.type": s.type,
            "spillway.task.attempt": s.attempts,
            "spillway.task.max_retries": s.policy.max_retries,
        }
        with self._tracer.start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,  # a worker shutting down hands the task back: no failure
            set_status_on_exception=False,
        ) as span:
            outcome = await run
            _ended(span, outcome)
        return outcome

    # --- wait ----------------------------------------------------------------------------------

    async def wait(self, task_id: str, waiting: Awaitable[Any]) -> Any:
        """Await `waiting` (`Spillway.wait`) under a wait span that names what it saw."""
        attributes = {"messaging.system": SYSTEM, "messaging.message.id": task_id}
        with self._tracer.start_as_current_span(
            "wait", kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            record = await waiting
            span.set_attribute("spillway.task.status", str(record.status.value))
        return record


def _ended(span: Span, o: Outcome) -> None:
    """What one attempt's outcome says on its span."""
    span.set_attribute("spillway.task.outcome", o.kind)
    if o.kind == "succeeded":
        return
    if o.kind == "cancelled":
        span.add_event("cancelled")
        return
    error = o.value[:_TEXT]
    kind, _, message = error.partition(": ")
    span.add_event(
        "exception",
        {"exception.type": kind, "exception.message": message, "exception.stacktrace": o.traceback},
    )
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, error))
    if o.kind == "retry":
        span.add_event("retry", {"spillway.retry.delay_ms": o.retry_delay_ms})
    elif o.kind == "dead":
        span.add_event("dead_letter", {"spillway.task.attempts": o.attempts})
