"""Strict JSON in and out: no NaN or Infinity, no lone surrogates, bounded depth. No pickle."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pydantic_core

__all__ = ["JSONError", "check_depth", "check_duplicate_keys", "dumps", "loads"]


class JSONError(ValueError):
    """The bytes are not strict JSON, or the document nests deeper than allowed."""


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


_KEY = re.compile(rb'"((?:[^"\\\\]|\\\\.)*)"\s*:')


def check_duplicate_keys(data: bytes | str, parsed: Any = _UNPARSED) -> None:
    """Refuse an object that names a key twice (`{"type": "a", "type": "b"}`).

    JSON parsers keep the last value silently, so a request could mean one thing to a proxy
    and another here. Given the `parsed` document, the check first counts colons: without
    `\\u` escapes a colon in JSON text is either a key's separator or inside a string, so the
    text has exactly as many as the parsed document has keys plus colons in its strings,
    unless a key was given twice (its separator, and its dropped value, add to the text only).
    The parsed document's count is read off its compact serialisation, which has one colon per
    key plus those in strings (orjson never escapes a colon): two C-speed passes, cheaper than
    walking the document in Python (docs/benchmarks.md#duplicate-key-check). Next, it is cheap
    when no key name repeats anywhere in the document; only then does a precise,
    object-by-object parse run.
    """
    raw = data.encode() if isinstance(data, str) else data
    if parsed is not _UNPARSED and b"\\u" not in raw:
        try:
            if raw.count(b":") == orjson.dumps(parsed).count(b":"):
                return
        except orjson.JSONEncodeError:
            pass  # not expected of what orjson parsed; the checks below decide
    keys = _KEY.findall(raw)
    if len(keys) == len(set(keys)):
        return

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


_STRING = re.compile(rb'"(?:[^"\\\\]|\\\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_depth(data: bytes | str, max_depth: int) -> None:
    """Reject documents nesting arrays/objects deeper than `max_depth`, before parsing them.

    Strings are cut out and everything but brackets dropped at C speed, so a hostile
    ``[[[[...`` costs O(n) and never reaches a recursive parser.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                raise JSONError(f"JSON nests deeper than {max_depth} levels")
        else:
            depth -= 1
