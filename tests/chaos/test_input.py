"""Scenarios 11 and 12 of issue 5: hostile request bodies, and foreign entries in the stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tests.chaos.checker import Verdict
from tests.chaos.conftest import StackFactory
from tests.chaos.load import History
from tests.chaos.scenarios import SIZES, conclude, enqueue, finish, pick, start

JSON = {"content-type": "application/json"}
VALID = b'{"type": "work", "payload": {"key": "valid"}}'

#: (name, headers, body, the statuses that are right for it)
CORPUS: list[tuple[str, dict[str, str], bytes, set[int]]] = [
    ("truncated", JSON, VALID[:-3], {400}),
    ("trailing comma", JSON, b'{"type": "work", "payload": {"key": "a"},}', {400}),
    ("empty", JSON, b"", {400}),
    ("null", JSON, b"null", {422}),
    ("top-level array", JSON, b"[" + VALID + b"]", {422}),
    ("BOM", JSON, b"\xef\xbb\xbf" + VALID, {400, 422}),
    ("invalid UTF-8", JSON, b'{"type": "work", "payload": {"key": "\xff\xfe"}}', {400}),
    ("NUL byte", JSON, b'{"type": "work",\x00 "payload": {"key": "a"}}', {400}),
    ("lone surrogate", JSON, b'{"type": "work", "payload": {"key": "\\ud800"}}', {422}),
    ("NaN", JSON, b'{"type": "work", "payload": {"key": "a", "ms": NaN}}', {422}),
    ("Infinity", JSON, b'{"type": "work", "payload": {"key": "a", "ms": Infinity}}', {422}),
    ("wrong type", JSON, b'{"type": "work", "payload": {"key": 5}}', {422}),
    ("wrong payload", JSON, b'{"type": "work", "payload": [1, 2]}', {422}),
    ("deep nesting", JSON, b"[" * 100_000 + b"]" * 100_000, {422}),
    ("deep objects", JSON, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {422}),
    ("unknown type", JSON, b'{"type": "nope", "payload": {"key": "a"}}', {422}),
    ("type case", JSON, b'{"type": "WORK", "payload": {"key": "a"}}', {422}),
    ("type path", JSON, b'{"type": "../work", "payload": {"key": "a"}}', {422}),
    ("type 10 KB", JSON, b'{"type": "' + b"w" * 10_000 + b'", "payload": {}}', {422}),
    ("text/plain", {"content-type": "text/plain"}, VALID, {415}),
    ("form", {"content-type": "application/x-www-form-urlencoded"}, VALID, {415}),
    ("xml", {"content-type": "application/xml"}, VALID, {415}),
    ("no content type", {}, VALID, {415}),
]
# Duplicate keys: orjson alone would keep the last one and enqueue a `work` task (a finding:
# see docs/reliability.md). Checked on its own below.
DUPLICATE_KEYS = b'{"type": "nope", "type": "work", "payload": {"key": "dup"}}'


def generated(count: int) -> list[bytes]:
    """Hypothesis-made bodies: random bytes, broken JSON texts, objects of the wrong shape."""
    names = st.text(max_size=12).filter(lambda t: t != "work")
    shapes = st.fixed_dictionaries(
        {
            "type": st.one_of(names, st.integers(), st.none(), st.just("work")),
            "payload": st.dictionaries(
                st.text(max_size=5).filter(lambda k: k != "key"), st.integers(), max_size=3
            ),
        }
    ).map(lambda d: httpx.Request("POST", "/", json=d).content)
    broken = st.binary(max_size=64).map(lambda b: VALID[: len(b) % len(VALID)] + b)
    bodies = st.one_of(st.binary(max_size=256), broken, shapes)
    out: list[bytes] = []

    @hsettings(
        max_examples=count, database=None, phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(bodies)
    def collect(body: bytes) -> None:
        out.append(body)

    collect()
    return out


@pytest.mark.parametrize("size", SIZES)
async def test_bad_input_gets_a_fast_4xx_and_enqueues_nothing(
    stacks: StackFactory, size: str
) -> None:
    stack = stacks()
    run = await start(stack, apis=1)
    cases = [(name, h, b, ok) for name, h, b, ok in CORPUS]
    cases += [(f"generated {i}", JSON, b, {400, 413, 415, 422}) for i, b in
              enumerate(generated(pick(size, 300, 10_000)))]  # fmt: skip
    wrong: list[tuple[str, int]] = []
    slow: list[tuple[str, float]] = []
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=run.urls[0], timeout=10.0) as http:
        for name, headers, body, ok in cases:
            started = time.monotonic()
            r = await http.post("/tasks", content=body, headers=headers)
            took = time.monotonic() - started
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code not in ok:
                wrong.append((name, r.status_code))
            if took > 0.2:
                # Timed again: a stall of this shared machine does not repeat, a slow answer does.
                started = time.monotonic()
                await http.post("/tasks", content=body, headers=headers)
                again = time.monotonic() - started
                if again > 0.2:
                    slow.append((name, round(min(took, again), 3)))
        sized = [await _upload(run.urls[0], 10 * 2**20, chunked=False) for _ in range(3)]
        chunked = [await _upload(run.urls[0], 10 * 2**20) for _ in range(3)]
    # Full size only: 50 uploads at once, against a 20 MB bound (finding 8 in
    # docs/reliability.md: 27-38 MB before the read buffer and the reads at once were capped).
    api_rss, storm = 0, [413]
    if size == "full":
        api_rss, storm = await _upload_storm(run.urls[0], stack.apis[run.ports[0]].pid, 50)

    sent = len(cases) + 6 + (50 if size == "full" else 0)
    verdict = Verdict("11 bad input", size, faults=f"{sent:,} hostile requests")
    verdict, store = await conclude(verdict, stack, History(), drain_timeout=10)
    verdict.notes["statuses"] = statuses
    verdict.worst_latency = max((t for _, t in slow), default=0.0)
    verdict.check("zero 5xx", not any(s >= 500 for s in statuses), statuses)
    verdict.check("each answered with the right 4xx", not wrong, wrong[:5])
    verdict.check("each within 200 ms", not slow, slow[:5])
    # A 413, or a reset if the client outlasts the server's lingering close; nothing else.
    verdict.check("10 MB with Content-Length: 413 or reset", set(sized) <= {413, 0}, sized)
    verdict.check("10 MB chunked: 413 or reset", set(chunked) <= {413, 0}, chunked)
    verdict.check("zero enqueues", not store.records and store.entries_added == 0,
                  (len(store.records), store.entries_added))  # fmt: skip
    # A reset instead of the 413 is a finding (see docs/reliability.md); anything else fails.
    verdict.notes["storm_resets"] = storm.count(0)
    verdict.check("storm: 413 or reset only", set(storm) <= {413, 0}, sorted(set(storm)))
    verdict.notes["rss_growth_mb"] = round(api_rss / 2**20, 1)
    verdict.check("API RSS growth < 20 MB under 50 concurrent 10 MB uploads", api_rss < 20 * 2**20,
                  round(api_rss / 2**20, 1))  # fmt: skip
    finish(verdict)


async def test_duplicate_keys_are_refused(stacks: StackFactory) -> None:
    run = await start(stacks(), apis=1)
    async with httpx.AsyncClient(base_url=run.urls[0], timeout=10.0) as http:
        r = await http.post("/tasks", content=DUPLICATE_KEYS, headers=JSON)
    assert r.status_code in (400, 422), r.text


class _Answer(asyncio.Protocol):
    """Collects what the server sends; a failed write (the server stopped reading) is no error."""

    def __init__(self) -> None:
        self.data = b""
        self.got = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if b"\r\n" in self.data:
            self.got.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.got.set()


# The stock protocol closes at once after a refusal: a client still sending gets a reset.
@pytest.mark.fast_protocol
async def test_a_10_mb_body_gets_its_413(stacks: StackFactory) -> None:
    run = await start(stacks(), apis=1)
    answers = [await _upload(run.urls[0], 10 * 2**20, chunked=c) for c in (False, True) * 3]
    assert answers == [413] * 6


async def _upload(url: str, size: int, *, chunked: bool = True) -> int:
    """POST `size` bytes, chunked (no Content-Length) or not; the answer's status (0: none).

    The server answers 413 before the body is all sent; the response is read while sending,
    as curl does, because a client that sends everything first sees only the reset.
    """
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_connection(_Answer, host, int(port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        f"POST /tasks HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    )
    chunk = b"[" + b"1," * 32_767
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
    try:
        transport.write(head.encode())
        sent = 0
        async with asyncio.timeout(30):
            while sent < size and not answer.got.is_set():
                if transport.get_write_buffer_size() < 1 << 20:
                    transport.write(framed)
                    sent += len(chunk)
                else:
                    await asyncio.sleep(0.001)
            if chunked and not answer.got.is_set():
                transport.write(b"0\r\n\r\n")
            await answer.got.wait()
    finally:
        transport.abort()
    parts = answer.data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def _upload_storm(url: str, api_pid: int, uploads: int) -> tuple[int, list[int]]:
    """Peak RSS growth (bytes) of the API's processes during `uploads` concurrent 10 MB POSTs,
    and the statuses they got (0: the connection was reset before any answer arrived)."""
    procs = [psutil.Process(api_pid), *psutil.Process(api_pid).children(recursive=True)]

    def rss() -> int:
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    before = rss()
    peak = before
    uploading = [asyncio.create_task(_upload(url, 10 * 2**20)) for _ in range(uploads)]
    while not all(u.done() for u in uploading):
        peak = max(peak, rss())
        await asyncio.sleep(0.02)
    codes = [await u for u in uploading]
    return peak - before, codes


@pytest.mark.parametrize("size", SIZES)
async def test_a_foreign_entry_in_the_stream_is_dead_lettered_unrun(
    stacks: StackFactory, size: str, tmp_path: Path
) -> None:
    stack = stacks()
    await start(stack, workers=1, concurrency=8)
    canary = tmp_path / "canary"
    # A protocol-0 pickle whose loading would run `touch <canary>` (never loaded: JSON only).
    pickled = f"cos\nsystem\n(S'touch {canary}'\ntR.".encode()
    stream = next(iter(stack.spillway.broker.core.streams(["default"])))
    foreign = [
        {"data": pickled},  # no task id at all
        {"id": pickled},  # an id that is a pickle
        {"id": "0" * 32},  # a well-formed id no task has
        {"id": "", "type": "work"},
    ] * pick(size, 1, 25)
    for fields in foreign:
        await stack.redis_client.xadd(stream, fields)  # type: ignore[arg-type]
    history = await enqueue(stack, [("work", 0)] * pick(size, 50, 1_000))

    verdict = Verdict("12 foreign entries in the stream", size)
    verdict.faults = f"{len(foreign)} non-Spillway entries"
    verdict, store = await conclude(verdict, stack, history, drain_timeout=30)
    malformed = [d for d in store.dead if d.get("error", "").startswith("Malformed")]
    verdict.check("each dead-lettered as malformed", len(malformed) == len(foreign),
                  f"{len(malformed)} of {len(foreign)}")  # fmt: skip
    verdict.check("on the first delivery", all(d.get("attempts") == "1" for d in malformed))
    verdict.check("no code in them ran", not canary.exists())
    verdict.check("duplicate executions = 0", verdict.duplicates == 0, verdict.duplicates)
    finish(verdict)
