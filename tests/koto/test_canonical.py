"""The fast canonical path (`canonical_text`, `json_string`, `rfc3339_ms`) gives exactly what the definitions give.

`canonical_bytes` is the contract's canonical form; the ledger writes and the receiver reads every record through
`canonical_text` instead. Over generated values (nested objects and arrays of strings and integers, non-ASCII and
escapes included, and every kind of value the contract refuses) both accept the same values with the same bytes and
refuse the same values with the same message.
"""

from __future__ import annotations

import contextlib
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
    NotCanonical,
    canonical_bytes,
    canonical_text,
    json_string,
    parse_canonical,
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


def definition(body: bytes) -> dict[str, Any] | str:
    """What the contract says of stored bytes: the object, or why not (the oracle for `parse_canonical`)."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except ValueError:
        return "does not parse"
    if not isinstance(obj, dict):
        return "not an object"
    try:
        want = canonical_bytes(obj)
    except CanonicalError:
        return "no canonical form"
    return obj if want == body else "not canonical"


def parsed(body: bytes) -> dict[str, Any] | str:
    try:
        return parse_canonical(body)
    except NotCanonical as e:
        return "not an object" if "object" in str(e) else "not canonical"
    except CanonicalError:
        return "no canonical form"
    except ValueError:
        return "does not parse"


def spellings(obj: Any) -> list[bytes]:
    """`obj` written the canonical way and several others (key order, spaces, ASCII escapes)."""
    out = []
    for sort in (True, False):
        for seps in ((",", ":"), (", ", ": ")):
            for ascii_only in (False, True):
                with contextlib.suppress(TypeError, ValueError):  # a key json cannot sort, a value it cannot write
                    out.append(json.dumps(obj, sort_keys=sort, separators=seps, ensure_ascii=ascii_only)
                               .encode("utf-8", "surrogatepass"))
    return out


@given(ANY, st.data())
@settings(max_examples=400, deadline=None)
def test_parse_canonical_accepts_and_refuses_exactly_what_the_definition_does(obj: dict[Any, Any],
                                                                              data: st.DataObject) -> None:
    """Over canonical bodies, other spellings of them, bodies with values the contract refuses, and bodies with a
    byte flipped, dropped or added anywhere: the fast path answers as the definition does, with an equal object."""
    bodies = spellings(obj)
    for body in list(bodies):
        if body:
            i = data.draw(st.integers(0, len(body) - 1))
            b = data.draw(st.integers(0, 255))
            bodies += [body[:i] + bytes([b]) + body[i + 1:], body[:i] + body[i + 1:], body[:i] + bytes([b]) + body[i:]]
    for body in bodies:
        assert parsed(body) == definition(body), body


@given(GOOD)
@settings(max_examples=300, deadline=None)
def test_parse_canonical_gives_back_every_canonical_value(obj: dict[str, Any]) -> None:
    assert parse_canonical(canonical_bytes(obj)) == json.loads(canonical_bytes(obj))


@pytest.mark.parametrize("body", [b'{"a":1,"a":1}', b'{"a":1.0}', b'{"a":true}', b'{"a":null}', b'{"a":[1,"x"]}',
                                  b'{"a":9007199254740992}', b'{"a":-9007199254740992}', b'{"a":9007199254740991}',
                                  b'{"a":18446744073709551616}', b'{"a":"\\ud800"}', b'{"a":"\\u00e9"}',
                                  b'{"a":"\xc3\xa9"}', b'{"a":"\xff"}', b'[1]', b'"x"', b' {"a":1}', b'{"a":1} ',
                                  b'{"b":1,"a":2}', b'{"a":{"c":1,"b":2}}', b'{"a":NaN}', b'{"a":01}', b'{}'])
def test_parse_canonical_on_the_edge_cases(body: bytes) -> None:
    assert parsed(body) == definition(body)


def test_orjson_writes_every_code_point_as_json_does() -> None:
    """The fast path's proof rests on this: for every character, orjson's string is json.dumps(ensure_ascii=False)'s."""
    import orjson

    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(points), 4096):
        text = "".join(points[i:i + 4096])
        assert orjson.dumps({"k": text}) == canonical_bytes({"k": text})


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
        {"data": {"k\udc00": 1}},
    ],
    ids=["float", "bool", "null", "huge", "huge-negative", "nested-float", "array-bool", "int-key", "nested-int-key",
         "set", "lone-surrogate-key"],
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
