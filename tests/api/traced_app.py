"""The sample application in a process that traces: the OpenTelemetry SDK configured as an
application would configure it, its spans written as JSON lines to $SPILLWAY_TEST_SPANS (one
file per process), for `tests/test_tracing.py` to read."""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from tests.api.sample_app import build

from spillway import Settings


class JsonLines(SpanExporter):
    """Each ended span, appended to a file as one line of JSON."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(JsonLines(f"{os.environ['SPILLWAY_TEST_SPANS']}.{os.getpid()}.jsonl"))
)
trace.set_tracer_provider(provider)
app = build(Settings())
