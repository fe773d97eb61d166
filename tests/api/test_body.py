"""Large JSON bodies: parsed in steps with the answers of the one-step parse."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from spillway.api.body import LARGE_JSON, parse_json, parse_large_json
from spillway.api.problems import HTTPProblem


def _large(head: bytes, unit: bytes, tail: bytes) -> bytes:
    return head + b",".join([unit] * (LARGE_JSON // len(unit) + 1)) + tail


LARGE_BODIES = {
    "valid": _large(b'{"type":"echo","payload":{"a":[', b'[{"k":"\\u003a"}]', b"]}}"),
    "duplicate key": _large(b'{"a":[', b"[]", b'],"k":1,"\\u006b":2}'),
    "too deep": _large(b"[", b"[]", b"]" + b"[" * 40),
    "NaN": _large(b"[", b"[]", b",NaN]"),
    "lone surrogate": _large(b"[", b"[]", b',"\\ud800"]'),
    "malformed": _large(b"[", b"[]", b",]"),
}


def _answer(body: bytes, *, in_steps: bool) -> object:
    try:
        if in_steps:
            return asyncio.run(parse_large_json(body, 32, 100_000))
        return parse_json(body, 32)
    except HTTPProblem as exc:
        return exc.status, exc.slug, exc.detail


@pytest.mark.parametrize("name", LARGE_BODIES)
def test_a_large_body_gets_the_answer_of_the_one_step_parse(name: str) -> None:
    body = LARGE_BODIES[name]
    assert _answer(body, in_steps=True) == _answer(body, in_steps=False)


def test_the_event_loop_runs_while_a_large_body_is_parsed() -> None:
    async def main() -> int:
        turns = 0

        async def count() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count())
        await asyncio.sleep(0)
        before = turns
        await parse_large_json(LARGE_BODIES["valid"], 32, 100_000)
        counter.cancel()
        return turns - before

    assert asyncio.run(main()) >= 3


def test_a_large_body_with_more_containers_than_allowed_is_422_before_it_is_parsed() -> None:
    body = _large(b'{"a":[', b"[]", b"]}")
    allowed = body.count(b"[") + body.count(b"{")

    assert asyncio.run(parse_large_json(body, 32, allowed)) == orjson.loads(body)
    with pytest.raises(HTTPProblem) as refused:
        asyncio.run(parse_large_json(body, 32, allowed - 1))
    assert (refused.value.status, refused.value.slug) == (422, "unsupported-json")
    assert f"more than {allowed - 1} arrays and objects" in refused.value.detail
