"""The receiver's boundary: a topic and the bytes that came with it in, a checked, typed message or `Rejected` out.

    msg = parse(prefix, topic, payload)   # Event | Birth | Offline | Reply, or raises Rejected(kind, reason)

Nothing else escapes `parse` for any input (tests/cloud/test_fuzz_intake.py drives it with structured and raw
fuzzing): size and nesting depth are checked before any JSON work (cloud/safejson.py), every field the receiver
uses is type- and range-checked, and a message on one gateway's topic that names another gateway is refused, so
one gateway's certificate can neither stop the receiver nor speak for another gateway.

Births, Wills and replies are checked here by hand-written typed checks that follow cloud/schemas (status.json,
birth.json, will.json, reply.json) rather than by jsonschema at run time: the checks are a few dozen lines, they
bound what the schemas leave open (a `last_dseq` of 24 digits matched `^[0-9]*$` and later broke `koto-cloud
grant` with OverflowError; the schemas are tightened to match), they cost microseconds instead of a validator
walk, and they keep jsonschema and its three compiled dependencies out of the receiver's install. The fuzz tests
hold the two together: whatever `parse` accepts, the schema accepts too.

Usage records are checked by cloud/verify.py's `parse_event` (shape, canonical form, hash), unchanged in what it
accepts but now reading through the same bounded loader; the signature is checked later, per batch
(cloud/verifier.py).

Size limits follow from the contract: a record, a command and so a reply to one are at most 64 KiB (the gateway
refuses a bigger command; `koto-cloud` refuses to build one); a birth or a Will is a dozen scalar fields, well under
1 KiB, so 4 KiB is a generous bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from koto.canonical import MAX_SAFE_INT, RFC3339

from .errors import Rejected
from .safejson import load_object
from .verify import Event, parse_event

MAX_STATUS_BYTES = 4 * 1024
MAX_REPLY_BYTES = 64 * 1024
MAX_DSEQ_DIGITS = 16  # a command's dseq is ^[1-9][0-9]{0,15}$ (common.json): below 2**63, PostgreSQL's BIGINT
MAX_ID_CHARS = 128  # a command id (common.json commandEnvelope.id)
KINDS = ("usage", "status", "reply")

_GATEWAY_ID = re.compile(r"[^/#+\s]{1,128}")
_DSEQ = re.compile(rf"[0-9]{{0,{MAX_DSEQ_DIGITS}}}")
_REPLY_STATUS = frozenset({"applied", "duplicate", "rejected"})
_BIRTH_INTS = ("epoch", "last_seq", "unacked", "tariff_version")


@dataclass(frozen=True, slots=True)
class Birth:
    """A gateway's birth on up/status: what it holds, so the receiver can resync by state (and `grant` knows dseq)."""

    gateway: str
    epoch: int
    last_seq: int
    last_dseq: int  # 0 when it has applied no command ("" in the payload)
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Offline:
    """The Will (or a clean goodbye) on up/status: `{"online": false, "gateway": ...}`."""

    gateway: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A gateway's reply to a downlink command, on up/reply."""

    gateway: str
    ack_of: str
    status: str
    reason: str
    dseq: str
    body: dict[str, Any]


Message = Event | Birth | Offline | Reply


def split_topic(prefix: str, topic: str) -> tuple[str, str]:
    """(gateway, kind) of an uplink topic `{prefix}/{gw}/up/{kind}`; Rejected("malformed") for anything else."""
    head = prefix + "/"
    parts = topic[len(head):].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or parts[1] != "up" or parts[2] not in KINDS or not _GATEWAY_ID.fullmatch(parts[0]):
        raise Rejected("malformed", f"message on unexpected topic {topic[:200]!r}")
    return parts[0], parts[2]


def parse(prefix: str, topic: str, payload: bytes) -> Message:
    """Check one uplink message completely (except a usage record's signature); raises only `Rejected`."""
    gateway, kind = split_topic(prefix, topic)
    if kind == "usage":
        return usage(gateway, payload)
    if kind == "status":
        return status(gateway, payload)
    return reply(gateway, payload)


def usage(gateway: str, payload: bytes) -> Event:
    ev = parse_event(payload)
    if ev.gateway != gateway:
        raise Rejected("wrong_topic", f"event source names gateway {ev.gateway[:80]!r} but came on {gateway!r}'s topic")
    return ev


def status(gateway: str, payload: bytes) -> Birth | Offline:
    msg = load_object(payload, max_bytes=MAX_STATUS_BYTES, what="status")
    online = msg.get("online")
    if online is not True and online is not False:
        raise Rejected("malformed", "status has no boolean 'online'")
    _same_gateway(msg, gateway, "status")
    if online is False:
        if set(msg) != {"online", "gateway"}:
            raise Rejected("malformed", "an offline status carries only 'online' and 'gateway'")
        return Offline(gateway)
    for name in ("version", "boot_id"):
        _text(msg, name, "birth")
    for name in _BIRTH_INTS:
        _count(msg, name, "birth")
    if type(msg.get("clock_synced")) is not bool:
        raise Rejected("malformed", "birth field 'clock_synced' is missing or not a boolean")
    _time(msg, "birth")
    return Birth(gateway, msg["epoch"], msg["last_seq"], _dseq(msg, "last_dseq", "birth"), msg)


def reply(gateway: str, payload: bytes) -> Reply:
    msg = load_object(payload, max_bytes=MAX_REPLY_BYTES, what="reply")
    _same_gateway(msg, gateway, "reply")
    ack_of = _text(msg, "ack_of", "reply")
    if len(ack_of) > MAX_ID_CHARS:
        raise Rejected("out_of_range", f"reply field 'ack_of' is {len(ack_of)} characters (at most {MAX_ID_CHARS})")
    state = _text(msg, "status", "reply")
    if state not in _REPLY_STATUS:
        raise Rejected("malformed", f"reply status {state[:40]!r} is not one of {sorted(_REPLY_STATUS)}")
    reason = _text(msg, "reason", "reply")
    _dseq(msg, "dseq", "reply")
    _time(msg, "reply")
    if "report" in msg and not isinstance(msg["report"], dict):
        raise Rejected("malformed", "reply field 'report' is not an object")
    return Reply(gateway, ack_of, state, reason, msg["dseq"], msg)


# -- field checks ------------------------------------------------------------------------------------------------
def _text(msg: dict[str, Any], name: str, what: str) -> str:
    value = msg.get(name)
    if not isinstance(value, str):
        raise Rejected("malformed", f"{what} field {name!r} is missing or not a string")
    if "\x00" in value:  # a "\u0000" escape: stored in a column, and PostgreSQL's text cannot hold a NUL
        raise Rejected("malformed", f"{what} field {name!r} contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: no database could store it
            raise Rejected("malformed", f"{what} field {name!r} is not valid Unicode") from None
    return value


def _same_gateway(msg: dict[str, Any], gateway: str, what: str) -> None:
    named = _text(msg, "gateway", what)
    if named != gateway:
        raise Rejected("wrong_topic", f"{what} names gateway {named[:80]!r} but came on {gateway!r}'s topic")


def _count(msg: dict[str, Any], name: str, what: str) -> int:
    value = msg.get(name)
    if type(value) is not int:
        raise Rejected("malformed", f"{what} field {name!r} is missing or not an integer")
    if not 0 <= value <= MAX_SAFE_INT:
        raise Rejected("out_of_range", f"{what} field {name!r} = {value} is outside 0..2**53-1")
    return value


def _dseq(msg: dict[str, Any], name: str, what: str) -> int:
    text = _text(msg, name, what)
    if not _DSEQ.fullmatch(text):
        if text.isascii() and text.isdigit():
            raise Rejected("out_of_range", f"{what} field {name!r} has {len(text)} digits (at most {MAX_DSEQ_DIGITS})")
        raise Rejected("malformed", f"{what} field {name!r} is not a decimal string")
    return int(text or "0")


def _time(msg: dict[str, Any], what: str) -> None:
    if not RFC3339.fullmatch(_text(msg, "time", what)):
        raise Rejected("malformed", f"{what} field 'time' is not an RFC 3339 time")
