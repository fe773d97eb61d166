"""Strict JSON in and out: no NaN or Infinity, no lone surrogates, bounded depth. No pickle."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pydantic_core

__all__ = [
    "ArrayItems",
    "ContainerLimit",
    "JSONError",
    "check_depth",
    "check_depth_in_steps",
    "check_duplicate_keys",
    "dumps",
    "loads",
]


class JSONError(ValueError):
    """The bytes are not strict JSON, or the document nests deeper than allowed."""


class ContainerLimit(JSONError):
    """The document holds more arrays and objects than allowed (counted as ``[`` and ``{``)."""


def loads(data: bytes | str, *, max_depth: int = 32) -> Any:
    """Parse strict JSON (orjson rejects NaN, Infinity and invalid UTF-8) with a depth limit,
    refusing objects with a duplicate key."""
    check_depth(data, max_depth)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JSONError(str(exc)) from exc
    check_duplicate_keys(data, value)
    return value


_UNPARSED: Any = object()


def check_duplicate_keys(data: bytes | str, parsed: Any = _UNPARSED) -> None:
    """Refuse an object that names a key twice, in any spelling JSON allows
    (`{"type": "a", "type": "b"}`, `{"type": "a", "\\u0074ype": "b"}`).

    JSON parsers keep the last value silently, so a request could mean one thing to a proxy
    and another here. The check counts colons, so it compares keys as the parser decoded them,
    whatever their escapes. In JSON text a colon is a key's separator, or inside a string,
    where it may also be spelled `\\u003a`; the parsed document's compact serialisation has one
    colon per key plus those of its decoded strings (orjson never escapes a colon). The two
    counts are equal exactly when no key was dropped: a key given twice leaves its separator,
    and its dropped value, in the text only. Two C-speed passes on every body
    (docs/benchmarks.md#duplicate-key-check), no walk of the document in Python.
    """
    raw = data.encode() if isinstance(data, str) else data
    if parsed is _UNPARSED:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise JSONError(str(exc)) from exc
    escaped = _escaped_colons(raw) if b"\\u003" in raw else 0
    try:
        serialised = orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        _check_pairs(raw)  # not expected of what orjson parsed: decide object by object
        return
    if raw.count(b":") + escaped != serialised.count(b":"):
        raise JSONError("duplicate key in a JSON object (a key named twice, in any spelling)")


def _escaped_colons(raw: bytes) -> int:
    """The `\\u003a` escapes (either hex case) in valid JSON text.

    In valid JSON a backslash only starts an escape, so once the escaped backslashes (`\\\\`,
    taken in pairs from the left of each run) are gone, every `\\u003a` left is one: counted at
    C speed, where a look-behind pattern tried every byte (docs/benchmarks.md#large-json-bodies).
    """
    if b"\\\\" in raw:
        raw = raw.replace(b"\\\\", b"")
    return raw.count(b"\\u003a") + raw.count(b"\\u003A")


def _check_pairs(raw: bytes) -> None:
    """The slow, precise check: every object's decoded keys, compared as it is parsed."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=pairs_hook)


def dumps(value: Any) -> str:
    """Serialise a result or payload: pydantic models, dataclasses and datetimes included."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # Models, dataclasses and the like: let pydantic make them plain, then serialise strictly.
        try:
            return orjson.dumps(pydantic_core.to_jsonable_python(value)).decode()
        except (TypeError, pydantic_core.PydanticSerializationError) as exc:
            raise JSONError(f"not JSON-serialisable: {exc}") from exc


# A JSON string, escapes included (the bytes strictly between its quotes are not `"` or `\`
# unless escaped).
# Items of a large array are first looked for this near: most are smaller.
_NEAR = 64 * 1024
_STRING_BODY = rb'"(?:[^"\\]++|\\.)*+"'
_STRING = re.compile(_STRING_BODY)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets count +1, closing ones -1 (as signed bytes).
_DELTAS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def check_depth(data: bytes | str, max_depth: int) -> None:
    """Reject documents nesting arrays/objects deeper than `max_depth`, before parsing them.

    Strings are cut out, everything but brackets dropped and the running depth summed at C
    speed, so a hostile ``[[[[...`` costs O(n) and never reaches a recursive parser.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    deltas = _STRING.sub(b"", raw).translate(_DELTAS, _NOT_BRACKETS)
    if max(itertools.accumulate(memoryview(deltas).cast("b")), default=0) > max_depth:
        raise JSONError(f"JSON nests deeper than {max_depth} levels")


# What the depth check may skip whole at once: text outside strings, and complete strings.
_SEGMENT = re.compile(rb'(?:[^"]++|' + _STRING_BODY + rb")*+")


def check_depth_in_steps(data: bytes, max_depth: int, step: int = 64 * 1024) -> Iterator[None]:
    """`check_depth`, about `step` bytes at a time: yields between steps so that an async caller
    can let the event loop run while a large body is checked.

    Each window ends where `check_depth`'s one pass of `_STRING` over the whole text would be
    between strings (after a complete string, or at a quote it cannot close, which it skips),
    so the windows' bracket counts, run on from one to the next, are exactly its own.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    depth = 0
    pos, end = 0, len(data)
    while pos < end:
        segment = _SEGMENT.match(data, pos, pos + step)
        stop = segment.end() if segment else pos
        if stop == pos:  # at a quote whose string does not close within the window
            string = _STRING.match(data, pos)
            stop = pos + 1 if string is None else string.end()
        deltas = _STRING.sub(b"", data[pos:stop]).translate(_DELTAS, _NOT_BRACKETS)
        if max(itertools.accumulate(memoryview(deltas).cast("b"), initial=depth)) > max_depth:
            raise JSONError(f"JSON nests deeper than {max_depth} levels")
        depth += deltas.count(1) - deltas.count(0xFF)
        pos = stop
        yield


def _container(depth: int) -> bytes:
    """A pattern for one array or object nesting at most `depth` levels, strings skipped whole."""
    inner = rb"(?!)"
    for _ in range(depth):
        inner = rb'[\[{](?:[^"\[\]{}]++|' + _STRING_BODY + rb"|" + inner + rb")*+[\]}]"
    return inner


class ArrayItems:
    """The items of the one array a large body holds (``{"<name>": [item, ...]}``), found one at a
    time without parsing them, each within a bounded window of bytes.

    So the accept path can refuse a batch of too many tasks, or a task too large or too deep,
    after reading no more of the body than the limits allow, and parse it a task at a time
    between which the event loop runs. `items` is None when the body is not of that plain
    shape (other fields, escapes in the name, a malformed or oversized item): the caller then
    decides by parsing it whole, which it only may if the body is small.
    """

    def __init__(self, name: str, max_depth: int) -> None:
        item = rb"(?:" + _container(max_depth - 2) + rb"|" + _STRING_BODY + rb'|[^"\[\]{},\s]++)'
        self._head = re.compile(rb'\s*+\{\s*+"' + re.escape(name.encode()) + rb'"\s*+:\s*+\[\s*+')
        self._item = re.compile(rb"\s*+" + item + rb"\s*+(?:,|(\]))")
        self._tail = re.compile(rb"\s*+\}\s*+")

    def items(
        self, raw: bytes, max_items: int, max_item: int, max_containers: int | None = None
    ) -> Iterator[tuple[int, int]] | None:
        """The (start, end) of each item, up to one more than `max_items`; None if the body does
        not open with the array. An item holding more than `max_containers` ``[`` and ``{`` is
        `ContainerLimit`, found without matching more of it than that."""
        head = self._head.match(raw)
        if head is None:
            return None
        return self._spans(raw, head.end(), max_items, max_item, max_containers)

    def _spans(
        self, raw: bytes, pos: int, max_items: int, max_item: int, max_containers: int | None
    ) -> Iterator[tuple[int, int]]:
        if raw[pos : pos + 1] == b"]":
            pos += 1
        else:
            for _ in range(max_items + 1):
                found = self._item.match(raw, pos, min(len(raw), pos + min(max_item, _NEAR)))
                if found is None and max_item > _NEAR:
                    # A large item (or a malformed one). The match costs time in proportion
                    # to the containers it walks (27 ms for 350,000 in 1 MiB), so its window
                    # ends where it holds more than the limit allows: an item that does not
                    # close within it holds too many.
                    end = min(len(raw), pos + max_item)
                    crowded = max_containers is not None and _crowded(raw, pos, end, max_containers)
                    found = self._item.match(raw, pos, crowded or end)
                    if found is None and crowded:
                        raise ContainerLimit(
                            f"an item at byte {pos} holds more than {max_containers} arrays and "
                            "objects"
                        )
                if found is None:
                    raise JSONError(
                        f"an item at byte {pos} is malformed, larger than {max_item} bytes "
                        "or nests too deep"
                    )
                yield pos, found.end() - 1
                pos = found.end()
                if found.group(1) is not None:
                    break
            else:
                return  # the caller counts more items than it allows
        if self._tail.fullmatch(raw, pos) is None:
            raise JSONError(f"unexpected content after the array at byte {pos}")


def _crowded(raw: bytes, start: int, end: int, limit: int) -> int:
    """Where, in 64 KiB steps, `raw[start:end]` has held more than `limit` ``[`` and ``{``
    (0 if it never does): a few calls at C speed, not a scan in Python."""
    seen = 0
    for step in range(start, end, _NEAR):
        stop = min(end, step + _NEAR)
        seen += raw.count(b"[", step, stop) + raw.count(b"{", step, stop)
        if seen > limit:
            return stop
    return 0
