"""JSON text spelled every way JSON allows, for the duplicate-key properties.

`spelled(draw, s)` writes a string literal whose characters are each given as themselves or as
an escape (`\\uXXXX` in either hex case, a surrogate pair for a character outside the BMP, a
short escape such as `\\/`), so one key can be written two ways that decode the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["documents", "keys", "spelled", "text_of", "with_duplicate", "without_duplicate"]

_SHORT = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}

#: Characters a key or string may hold (no lone surrogates: they are not strict JSON).
_CHARS = st.characters(codec="utf-8")
keys = st.text(st.one_of(_CHARS, st.sampled_from(list('"\\/:,{}[]t\u00e9\U0001f600'))), max_size=8)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(_CHARS, max_size=8)
)
documents: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _hex(code: int, upper: bool) -> str:
    text = f"\\u{code:04x}"
    return text.upper().replace("\\U", "\\u") if upper else text


def spelled(draw: st.DrawFn, text: str) -> str:
    """A JSON string literal of `text`, each character spelled as `draw` chooses."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        how = draw(st.integers(0, 3))
        if how == 1 and code > 0xFFFF:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            upper = draw(st.booleans())
            out.append(_hex(high, upper) + _hex(low, upper))
        elif how == 1:
            out.append(_hex(code, draw(st.booleans())))
        elif how == 2 and ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch in _SHORT or code < 0x20:
            out.append(_SHORT.get(ch) or _hex(code, draw(st.booleans())))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def text_of(draw: st.DrawFn, value: Any) -> str:
    """`value` as JSON text, every string and key spelled as `draw` chooses."""
    if isinstance(value, dict):
        pairs = [f"{spelled(draw, k)}:{text_of(draw, v)}" for k, v in value.items()]
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(text_of(draw, v) for v in value) + "]"
    if isinstance(value, str):
        return spelled(draw, value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@st.composite
def with_duplicate(draw: st.DrawFn) -> str:
    """An object (maybe nested in others) that names one key twice, in two spellings."""
    obj = draw(st.dictionaries(keys, documents, min_size=1, max_size=4))
    key = draw(st.sampled_from(sorted(obj)))
    pairs = [(spelled(draw, k), text_of(draw, v)) for k, v in obj.items()]
    again = (spelled(draw, key), text_of(draw, draw(documents)))
    pairs.insert(draw(st.integers(0, len(pairs))), again)
    text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    for wrap in draw(st.lists(st.sampled_from(["list", "object"]), max_size=3)):
        text = f"[1,{text}]" if wrap == "list" else f"{{{spelled(draw, 'k')}:{text}}}"
    return text


@st.composite
def without_duplicate(draw: st.DrawFn) -> tuple[Any, str]:
    """A document and its text, keys and strings spelled every way, no key named twice."""
    value = draw(documents)
    return value, text_of(draw, value)
