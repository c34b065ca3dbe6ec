"""The fast canonical path (`canonical_text`, `json_string`, `rfc3339_ms`) gives exactly what the definitions give.

`canonical_bytes` is the contract's canonical form; the ledger writes and the receiver reads every record through
`canonical_text` instead. Over generated values (nested objects and arrays of strings and integers, non-ASCII and
escapes included, and every kind of value the contract refuses) both accept the same values with the same bytes and
refuse the same values with the same message.
"""

from __future__ import annotations

import json
import re
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koto.canonical import (
    MAX_SAFE_INT,
    CanonicalError,
    canonical_bytes,
    canonical_text,
    json_string,
    rfc3339,
    rfc3339_ms,
)


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


# Strings with the characters JSON must escape and the ones it must not, beside whatever hypothesis draws.
TRICKY = st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "ä", "☃", "😀", "\ufeff", "a\"b\\c", ""])
TEXT = st.one_of(st.text(), TRICKY)
SAFE_INT = st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
ALLOWED = st.one_of(TEXT, SAFE_INT, st.sampled_from([Colour.RED, Level.HIGH, MAX_SAFE_INT, -MAX_SAFE_INT]))
REFUSED = st.one_of(
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.sampled_from([MAX_SAFE_INT + 1, -MAX_SAFE_INT - 1, 2**64]),
    st.integers().filter(lambda n: abs(n) > MAX_SAFE_INT),
    st.builds(object),
    st.just(b"bytes"),
)
KEY = TEXT
ANY_KEY = st.one_of(KEY, KEY, KEY, st.integers(), st.none())


def nested(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=3).map(tuple),
            st.dictionaries(keys, inner, max_size=5),
        ),
        max_leaves=12,
    )


GOOD = st.dictionaries(KEY, nested(ALLOWED, KEY), max_size=8)
# Mostly good values with a refused value or key somewhere: at the top, in an object, in an array.
ANY = st.dictionaries(ANY_KEY, nested(st.one_of(ALLOWED, ALLOWED, ALLOWED, REFUSED), ANY_KEY), max_size=8)


def same_answer(obj: dict[str, Any]) -> None:
    try:
        want = canonical_bytes(obj)
    except CanonicalError as e:
        with pytest.raises(CanonicalError, match=f"^{re.escape(str(e))}$"):
            canonical_text(obj)
    else:
        assert canonical_text(obj).encode("utf-8") == want


@given(GOOD)
@settings(max_examples=400, deadline=None)
def test_the_fast_path_gives_the_canonical_bytes_of_every_canonical_value(obj: dict[str, Any]) -> None:
    assert canonical_text(obj).encode("utf-8") == canonical_bytes(obj)


@given(ANY)
@settings(max_examples=400, deadline=None)
def test_the_fast_path_accepts_and_refuses_exactly_what_canonical_bytes_does(obj: dict[str, Any]) -> None:
    same_answer(obj)


@pytest.mark.parametrize(
    "obj",
    [
        {"e": 1.5},
        {"ok": True},
        {"n": None},
        {"big": MAX_SAFE_INT + 1},
        {"neg": -MAX_SAFE_INT - 1},
        {"data": {"nested": {"f": 0.1}}},
        {"data": {"tags": ["a", 1, {"x": False}]}},
        {1: "int key"},
        {"data": {2: "int key, nested"}},
        {"s": {"a", "set"}},
    ],
    ids=["float", "bool", "null", "huge", "huge-negative", "nested-float", "array-bool", "int-key", "nested-int-key",
         "set"],
)
def test_a_value_without_a_canonical_form_is_refused_by_both_with_the_same_message(obj: dict[Any, Any]) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(obj)
    same_answer(obj)


def test_where_names_the_object_in_the_message() -> None:
    with pytest.raises(CanonicalError, match=r"^data\.x\[1\]: float is not allowed"):
        canonical_text({"x": [1, 2.5]}, where="data")


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_a_string_literal_is_the_canonical_json_of_the_string(text: str) -> None:
    assert json_string(text) == json.dumps(text, ensure_ascii=False)
    assert canonical_text({"k": text}) == '{"k":' + json_string(text) + "}"


@given(st.integers(min_value=0, max_value=253402300799999))
@settings(max_examples=300, deadline=None)
def test_the_fast_time_format_is_the_contracts_rfc3339(ms: int) -> None:
    assert rfc3339_ms(ms) == rfc3339(ms / 1000)


def test_a_lone_surrogate_has_no_canonical_form_on_either_path() -> None:
    """JSON may escape a lone surrogate ("\\ud800"); it is not Unicode, so it cannot be signed bytes: refused, never
    a UnicodeEncodeError escaping to the caller (the receiver's loop)."""
    import json

    from koto.canonical import CanonicalError, canonical_bytes, canonical_text

    value = json.loads('{"data": {"function": "w\\ud800sh"}}')
    for encode in (canonical_bytes, canonical_text):
        with pytest.raises(CanonicalError, match=r"\$\.data\.function: string is not valid Unicode"):
            encode(value)


def test_a_payload_with_a_lone_surrogate_is_rejected_by_the_receivers_parser() -> None:
    from cloud.errors import Rejected
    from cloud.verify import parse_event
    from tests.support.events import EventFactory

    body = EventFactory("gw-1").chain(1)[0].replace(b'"appliance":"', b'"appliance":"\\ud800', 1)
    assert b"\\ud800" in body
    with pytest.raises(Rejected) as e:
        parse_event(body)
    assert e.value.kind == "malformed"
