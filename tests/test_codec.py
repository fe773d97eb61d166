"""Strict JSON: what the codec refuses, and that legitimate documents pass untouched."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.security.spellings import with_duplicate, without_duplicate

from spillway.codec import (
    ArrayItems,
    ContainerLimit,
    JSONError,
    check_depth,
    check_depth_in_steps,
    check_duplicate_keys,
    loads,
)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a": 1, "b": {"a": 2}}',  # the same key in different objects is fine
        b'[{"k": 1}, {"k": 2}]',
        b'{"text": "looks like \\"k\\": 1", "k": 3}',  # a key-like string inside a value
        b"{}",
        b'{"url": "https://h:80/a", "k:1": ["a:b", {"c": ":"}]}',  # colons in strings
        b'{"a": "\\u003a", "b": 1}',  # an escaped colon
    ],
)
def test_documents_without_duplicate_keys_pass(doc: bytes) -> None:
    check_duplicate_keys(doc)
    assert loads(doc) is not None


@pytest.mark.parametrize(
    "doc",
    [
        b'{"type": "a", "type": "b"}',
        b'{"p": {"k": 1, "x": [], "k": 2}}',
        b'[{"a": 1, "a": 1}]',
        b'{"u": "x:y", "u": "z"}',  # the dropped value had a colon
        b'{"a": 1, "a": 2, "b": "\\u003a"}',  # an escaped colon evens out the colon count
    ],
)
def test_an_object_naming_a_key_twice_is_refused(doc: bytes) -> None:
    with pytest.raises(JSONError, match="duplicate key"):
        loads(doc)


@pytest.mark.parametrize("doc", [b"[NaN]", b"[Infinity]", b'["\\ud800"]', b"[1,]", b"\xff"])
def test_values_that_are_not_strict_json_are_refused(doc: bytes) -> None:
    with pytest.raises(JSONError):
        loads(doc)


def test_nesting_is_bounded_before_parsing() -> None:
    with pytest.raises(JSONError, match="deeper than 32"):
        loads(b"[" * 100_000 + b"]" * 100_000)
    assert loads(b'"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["') == "[" * 44


@given(with_duplicate())
def test_a_key_named_twice_in_any_two_spellings_is_refused(text: str) -> None:
    with pytest.raises(JSONError, match="duplicate key"):
        loads(text.encode())


@given(without_duplicate())
def test_documents_without_a_duplicate_pass_in_any_spelling(case: tuple[Any, str]) -> None:
    value, text = case
    assert loads(text.encode()) == value


@pytest.mark.parametrize(
    "doc",
    [
        b'{"type": "a", "\\u0074ype": "b"}',
        b'{"type": "a", "\\u0074\\u0079\\u0070\\u0065": "b"}',
        b'{"\\u00e9": 1, "\\u00E9": 2}',
        b'{"a/b": 1, "a\\/b": 2}',
        b'{"\\ud83d\\ude00": 1, "\xf0\x9f\x98\x80": 2}',
        b'{"\\ud83d\\ude00": 1, "\\uD83D\\uDE00": 2}',
        b'{"a:": 1, "a\\u003a": 2}',
        b'{"k": 1, "k\\u003a": "\\u003a", "k": 2}',
    ],
)
def test_a_key_spelled_twice_with_escapes_is_refused(doc: bytes) -> None:
    with pytest.raises(JSONError, match="duplicate key"):
        loads(doc)


def test_an_escaped_backslash_before_u003a_is_no_colon() -> None:
    # `\\u003a` is a backslash and the text "u003a": counting it as a colon would hide a duplicate.
    with pytest.raises(JSONError, match="duplicate key"):
        loads(b'{"a": 1, "a": 2, "b": "\\\\u003a"}')
    assert loads(b'{"a": "\\\\u003a", "b": "\\\\\\u003a"}') == {"a": "\\u003a", "b": "\\:"}


_DEPTH_TEXT = st.lists(
    st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b",", b"\n", b'"[', b']"']),
    max_size=60,
).map(b"".join)


@given(_DEPTH_TEXT, st.integers(0, 6), st.integers(1, 8))
def test_the_depth_check_in_steps_answers_as_the_whole_check(
    text: bytes, max_depth: int, step: int
) -> None:
    # Malformed text included: the answer decides between 422 (too deep) and 400 (malformed).
    try:
        check_depth(text, max_depth)
    except JSONError:
        whole = False
    else:
        whole = True
    try:
        for _ in check_depth_in_steps(text, max_depth, step):
            pass
    except JSONError:
        in_steps = False
    else:
        in_steps = True
    assert in_steps == whole


@pytest.mark.parametrize("containers", [10, 99_999, 100_000])
def test_array_items_finds_an_item_up_to_the_container_limit(containers: int) -> None:
    item = b'{"a":[' + b",".join([b"[]"] * (containers - 2)) + b"]}"
    body = b'{"tasks":[' + item + b',{"b":1}]}'
    spans = ArrayItems("tasks", 32).items(body, 10, 1 << 20, max_containers=100_000)

    assert spans is not None
    assert [body[a:b] for a, b in spans] == [item, b'{"b":1}']


def test_array_items_refuses_an_item_over_the_container_limit_without_matching_it_all() -> None:
    item = b'{"a":[' + b",".join([b"[]"] * 300_000) + b"]}"
    body = b'{"tasks":[' + item + b"]}"
    spans = ArrayItems("tasks", 32).items(body, 10, 1 << 20, max_containers=100_000)

    assert spans is not None
    with pytest.raises(ContainerLimit, match="more than 100000 arrays and objects"):
        list(spans)
