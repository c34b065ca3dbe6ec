"""Fuzzing the receiver's parsers (cloud/intake.py): whatever arrives, `parse` returns a checked message or raises
`Rejected`, never anything else, and never accepts what the contract's schemas refuse.

Two kinds of input: structured (valid records, births, Wills and replies as gateways send them, then mutated: wrong
types, huge integers, deep nesting, long strings, odd Unicode, missing, extra and duplicate keys) and raw (random
bytes, and valid payloads with bytes flipped, cut or inserted). The schemas in cloud/schemas, through jsonschema,
are the oracle for "valid": the receiver's hand-written checks may be stricter than the schemas, never looser.

`make test` runs them with about 3,000 cases in all (500 to 1,000 each, ~15 s here); `make fuzz` with
KOTO_FUZZ_EXAMPLES=100000. A crash found here becomes an `@example` or a literal in test_intake_regressions below.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cloud import intake
from cloud.errors import Rejected
from cloud.verify import Event
from koto.canonical import MAX_SAFE_INT
from tests.support.cloudpeer import birth_payload
from tests.support.events import EventFactory
from tests.support.fuzzing import fuzz_settings
from tests.support.schemas import registry, validator

GW = "gw-1"
PREFIX = "koto/v1"
TOPIC = {kind: f"{PREFIX}/{GW}/up/{kind}" for kind in intake.KINDS}


@cache
def record_validator() -> Draft202012Validator:
    """The envelope every record must have (common.json recordEnvelope): what the receiver checks before storing.

    The per-type `data` schemas (event-usage.json ...) are the gateway's business, signed by it; the receiver
    stores what is signed and linked, so its acceptance is held to the envelope."""
    ref = {"$ref": "https://koto.invalid/schemas/v1/common.json#/$defs/recordEnvelope"}
    return Draft202012Validator(ref, registry=registry())


@cache
def valid_record() -> dict[str, Any]:
    f = EventFactory(GW)
    return f.event(1, "0" * 64)


def valid_reply() -> dict[str, Any]:
    return {"ack_of": "3f1c-0001", "status": "applied", "reason": "diagnostics report attached", "dseq": "12",
            "gateway": GW, "time": "2026-11-30T01:02:03.045Z",
            "report": {"ledger": {"epoch": 1, "head_seq": 40}, "sync": {"connected": 1, "ack_age_s": 1.5}}}


VALID = {
    "usage": lambda: json.loads(json.dumps(valid_record())),  # a fresh copy: mutations must not leak
    "status": lambda: birth_payload(GW, last_dseq="7"),
    "will": lambda: {"online": False, "gateway": GW},
    "reply": valid_reply,
}
TOPIC_OF = {"usage": "usage", "status": "status", "will": "status", "reply": "reply"}


def check(topic: str, payload: bytes) -> intake.Message | None:
    """The property: parse raises Rejected or returns a message the schemas accept. Returns it (None = refused)."""
    try:
        msg = intake.parse(PREFIX, topic, payload)
    except Rejected as e:
        assert e.kind in ("malformed", "too_large", "too_deep", "out_of_range", "wrong_topic")
        return None
    schema = ("record" if isinstance(msg, Event) else "reply.json" if isinstance(msg, intake.Reply)
              else "status.json")
    assert schema_errors(schema, payload) == []
    if isinstance(msg, Event):
        assert msg.gateway == GW and 0 <= msg.epoch <= MAX_SAFE_INT and 1 <= msg.seq <= MAX_SAFE_INT
    elif isinstance(msg, intake.Birth):
        assert 0 <= msg.last_dseq < 2**63 and 0 <= msg.epoch <= MAX_SAFE_INT
    assert msg.gateway == GW
    return msg


@lru_cache(maxsize=8192)  # the oracle costs ~2 ms a record; generated payloads often repeat
def schema_errors(schema: str, payload: bytes) -> list[str]:
    v = record_validator() if schema == "record" else validator(schema)
    return [e.message for e in v.iter_errors(json.loads(payload))]


# -- nasty values ---------------------------------------------------------------------------------------------------
def nested(depth: int, inner: Any = 1) -> Any:
    for i in range(depth):
        inner = [inner] if i % 2 else {"k": inner}
    return inner


NASTY: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.floats(), st.integers(),
    st.integers(min_value=MAX_SAFE_INT - 2, max_value=10**30), st.integers(min_value=-(10**30), max_value=-1),
    st.integers(min_value=0, max_value=70).map(lambda n: int("9" * n or "0")),  # up to 70 digits
    st.text(max_size=40),
    st.integers(min_value=0, max_value=80_000).map(lambda n: "x" * n),  # long strings, past every size limit
    st.sampled_from(["", "\ud800", "\udfff", "\x00", "é", "𝕜", "\u2028", "\u2003", "٣", "gw-2", "gw-1/x",
                     "2026-11-30T01:02:03.045Z\n", "1" * 24, "0" * 64, "MEUCIQ==", "NaN"]),
    st.text(alphabet="0123456789", min_size=1, max_size=30),
    st.integers(min_value=1, max_value=200).map(nested),
    st.lists(st.integers(), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
KEY = st.one_of(st.sampled_from(["online", "gateway", "epoch", "seq", "last_dseq", "data", "sig", "id", "time",
                                 "ack_of", "status", "dseq", "report", "source", "prevhash"]), st.text(max_size=8))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    which = draw(st.sampled_from(sorted(VALID)))
    msg = VALID[which]()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = msg
        if isinstance(msg.get("data"), dict) and draw(st.booleans()):
            target = msg["data"] = dict(msg["data"])
        keys = sorted(target)
        op = draw(st.sampled_from(["set", "set", "del", "add"]))
        if op == "del" and keys:
            target.pop(draw(st.sampled_from(keys)))
        elif op == "set" and keys:
            target[draw(st.sampled_from(keys))] = draw(NASTY)
        else:
            target[draw(KEY)] = draw(NASTY)
    text = json.dumps(msg, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(min_value=0, max_value=9)) == 0 and msg:  # the same key twice in the top-level object
        k = draw(st.sampled_from(sorted(msg)))
        text = "{" + json.dumps(k) + ":" + json.dumps(draw(NASTY)) + "," + text[1:]
    return TOPIC[TOPIC_OF[which]], text.encode("utf-8", "surrogatepass")


@fuzz_settings(800)
@given(mutated())
@example((TOPIC["usage"], b'{"specversion":"1.0","data":' + b'{"a":' * 6000 + b"1" + b"}" * 6001))
@example((TOPIC["status"], json.dumps(birth_payload("gw-2")).encode()))
@example((TOPIC["status"], json.dumps(birth_payload(GW, last_dseq="1" * 24)).encode()))
@example((TOPIC["reply"], b'{"ack_of":"a","ack_of":"b","status":"applied","reason":"","dseq":"1","gateway":"gw-1",'
                          b'"time":"2026-11-30T01:02:03.045Z"}'))
def test_mutated_messages_are_refused_or_valid(case: tuple[str, bytes]) -> None:
    topic, payload = case
    check(topic, payload)


@fuzz_settings(600)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_flipped_cut_or_inserted_bytes_are_refused_or_valid(which: str, data: st.DataObject) -> None:
    payload = bytearray(json.dumps(VALID[which]()).encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        pos = data.draw(st.integers(min_value=0, max_value=len(payload)))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and pos < len(payload):
            payload[pos] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del payload[pos:pos + data.draw(st.integers(min_value=1, max_value=20))]
        else:
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"[" * 40, b'"', b"\\", b"\\ud800", b"{", b"}", b",", b"1e999", b"-0", b"\xff"]))
    check(TOPIC[TOPIC_OF[which]], bytes(payload))


@fuzz_settings(1000)
@given(st.sampled_from(sorted(TOPIC.values())), st.binary(max_size=2048))
@example(TOPIC["usage"], b"[" * 30_000)
@example(TOPIC["status"], b'"' + b'\\"' * 2000)
@example(TOPIC["reply"], b"\xef\xbb\xbf{}")
def test_raw_bytes_are_refused(topic: str, payload: bytes) -> None:
    check(topic, payload)


@fuzz_settings(500)
@given(st.text(max_size=120), st.binary(max_size=64))
@example("koto/v1/gw-1/up/usage/x", b"{}")
@example("koto/v1//up/status", b"{}")
@example("koto/v1/gw+1/up/reply", b"{}")
def test_any_topic_is_refused_or_an_uplink_kind(topic: str, payload: bytes) -> None:
    try:
        intake.parse(PREFIX, topic, payload)
    except Rejected:
        return
    pytest.fail("no payload of 64 random bytes is a valid message")


# -- regressions: the holes of issue 14 and what the fuzzing found ------------------------------------------------
@pytest.mark.parametrize(("topic", "payload", "kind"), [
    (TOPIC["usage"], b'{"specversion":"1.0","data":' + b'{"a":' * 6000 + b"1" + b"}" * 6001, "too_deep"),
    (TOPIC["usage"], b"x" * (64 * 1024 + 1), "too_large"),
    (TOPIC["status"], json.dumps(birth_payload("gw-2")).encode(), "wrong_topic"),
    (TOPIC["status"], json.dumps(birth_payload(GW, last_dseq="1" * 24)).encode(), "out_of_range"),
    (TOPIC["status"], json.dumps(birth_payload(GW, epoch=10**24)).encode(), "out_of_range"),
    (TOPIC["status"], json.dumps(birth_payload(GW, online=1)).encode(), "malformed"),
    (TOPIC["status"], b'{"online":false,"gateway":"gw-1","gateway":"gw-2"}', "malformed"),
    (TOPIC["reply"], json.dumps({**valid_reply(), "reason": "\ud800"}).encode(), "malformed"),
    (TOPIC["reply"], json.dumps({**valid_reply(), "dseq": "9" * 17}).encode(), "out_of_range"),
    (TOPIC["reply"], b'{"ack_of":NaN}', "malformed"),
    # Found by the fuzzing: a lone surrogate in a key of a record's data (UnicodeEncodeError from the encoder).
    (TOPIC["usage"], json.dumps({**valid_record(), "data": {**valid_record()["data"], "\ud800": 1}}).encode(),
     "malformed"),
])
def test_intake_regressions(topic: str, payload: bytes, kind: str) -> None:
    with pytest.raises(Rejected) as e:
        intake.parse(PREFIX, topic, payload)
    assert e.value.kind == kind


def test_the_valid_messages_are_accepted() -> None:
    """The control: what a gateway sends passes (so the properties above are not met by refusing everything)."""
    for which, make in VALID.items():
        assert check(TOPIC[TOPIC_OF[which]], json.dumps(make()).encode()) is not None, which
