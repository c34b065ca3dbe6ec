"""Independent verification of usage events: shape, signature and chain, written from the contract, not the ledger.

The receiver must not trust the gateway's code to be right, so nothing here imports `metering`: an event is checked
against docs/contract.md (field names, `id` = "{epoch}-{seq}", `sequence` = seq padded to 20 digits, `data` repeating
epoch and seq, `source` = "urn:koto:gw:{gw}"), its hash is recomputed from the canonical bytes without `sig`, and the
signature is checked with the gateway's registered public key. The hot path uses these hand-written checks rather
than jsonschema (cloud/schemas holds the same rules for other implementers and for the tests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from koto.canonical import MAX_SAFE_INT, RFC3339, ZERO_HASH, CanonicalError, canonical_text
from koto.signing import PublicKey, verify_bytes

from .errors import Rejected
from .safejson import load_object

EVENT_TYPES = frozenset({"io.koto.usage.v1", "io.koto.clock.v1", "io.koto.lifecycle.v1"})
SOURCE_PREFIX = "urn:koto:gw:"
MAX_EVENT_BYTES = 64 * 1024
_HEX = frozenset("0123456789abcdef")
_SIG = re.compile(r"[A-Za-z0-9+/]{1,200}={0,2}")  # a DER P-256 signature is at most 72 bytes: 96 base64 characters
# ECDSA over a digest we already have (the record hash is the SHA-256 of the signed bytes): the same check as
# koto.signing.verify_bytes without hashing the bytes a second time or building the algorithm object per record.
_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_STR_FIELDS = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "sequence",
               "timestatus", "prevhash", "sig")


@dataclass(frozen=True, slots=True)
class Event:
    """A usage event that passed the shape checks; `signed` is the canonical bytes its `sig` must cover."""

    gateway: str
    source: str
    id: str
    epoch: int
    seq: int
    type: str
    subject: str
    time: str
    hash: str
    prevhash: str
    sig: str
    body: bytes  # the payload as received (the gateway's Stored.body bytes)
    signed: bytes
    digest: bytes = b""  # sha256(signed), the bytes of `hash`; empty = not computed

    def verify(self, key: PublicKey) -> bool:
        if len(self.digest) != 32:
            return verify_bytes(key, self.signed, self.sig)
        try:
            key.verify(base64.b64decode(self.sig, validate=True), self.digest, _PREHASHED)
        except (InvalidSignature, ValueError):
            return False
        return True


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


def gateway_of(source: str) -> str:
    if not source.startswith(SOURCE_PREFIX) or len(source) == len(SOURCE_PREFIX):
        raise Rejected("malformed", f"source {source[:80]!r} is not urn:koto:gw:<gateway>")
    return source[len(SOURCE_PREFIX):]


def parse_event(payload: bytes) -> Event:
    """Parse and shape-check one uplink usage payload. Raises `Rejected` (kind malformed, too_large, too_deep or
    out_of_range) and nothing else, whatever the bytes."""
    ev = load_object(payload, max_bytes=MAX_EVENT_BYTES, what="usage record")
    for name in _STR_FIELDS:
        if not isinstance(ev.get(name), str):
            raise Rejected("malformed", f"field {name!r} is missing or not a string")
    data = ev.get("data")
    if not isinstance(data, dict):
        raise Rejected("malformed", "field 'data' is missing or not an object")
    epoch, seq = data.get("epoch"), data.get("seq")
    if type(epoch) is not int or type(seq) is not int or epoch < 0 or seq < 1:
        raise Rejected("malformed", "data.epoch and data.seq must be integers (epoch >= 0, seq >= 1)")
    if epoch > MAX_SAFE_INT or seq > MAX_SAFE_INT:
        raise Rejected("out_of_range", f"data.epoch {epoch} or data.seq {seq} is above 2**53-1")
    if ev["specversion"] != "1.0":
        raise Rejected("malformed", f"specversion {ev['specversion'][:40]!r} is not '1.0'")
    if ev["type"] not in EVENT_TYPES:
        raise Rejected("malformed", f"type {ev['type'][:80]!r} is not one of {sorted(EVENT_TYPES)}")
    if ev["id"] != f"{epoch}-{seq}":
        raise Rejected("malformed", f"id {ev['id'][:80]!r} does not match data epoch {epoch} and seq {seq}")
    if ev["sequence"] != f"{seq:020d}":
        raise Rejected("malformed", f"sequence {ev['sequence'][:40]!r} is not seq {seq} padded to 20 digits")
    if ev["timestatus"] not in ("S", "U"):
        raise Rejected("malformed", f"timestatus {ev['timestatus'][:20]!r} is not 'S' or 'U'")
    if not _is_hex64(ev["prevhash"]):
        raise Rejected("malformed", "prevhash is not 64 lowercase hex digits")
    if len(ev) != len(_STR_FIELDS) + 1:
        extra = sorted(set(ev) - {*_STR_FIELDS, "data"})
        raise Rejected("malformed", f"fields {', '.join(repr(k[:40]) for k in extra[:5])} are not in the contract")
    if ev["datacontenttype"] != "application/json" or not ev["subject"]:
        raise Rejected("malformed", "datacontenttype is not 'application/json' or subject is empty")
    if "\x00" in ev["subject"]:  # stored in a column of its own: PostgreSQL's text cannot hold a NUL
        raise Rejected("malformed", "subject contains a NUL character")
    if not RFC3339.fullmatch(ev["time"]):
        raise Rejected("malformed", f"time {ev['time'][:40]!r} is not an RFC 3339 time")
    if not _SIG.fullmatch(ev["sig"]):
        raise Rejected("malformed", "sig is not base64")
    if seq == 1 and ev["prevhash"] != ZERO_HASH:
        raise Rejected("malformed", "the first record of an epoch must have a prevhash of 64 zeros")
    gateway = gateway_of(ev["source"])
    body = {k: v for k, v in ev.items() if k != "sig"}
    try:  # koto's fast path: the bytes of canonical_bytes(body), or its refusal naming the value
        signed = canonical_text(body).encode("utf-8")
    except CanonicalError as e:
        raise Rejected("malformed", f"event has no canonical form: {e}") from None
    except UnicodeEncodeError:  # koto.canonical checks values, not keys, for lone surrogates (found by fuzzing)
        raise Rejected("malformed", "event has no canonical form: a key is not valid Unicode") from None
    digest = hashlib.sha256(signed).digest()
    return Event(
        gateway=gateway, source=ev["source"], id=ev["id"], epoch=epoch, seq=seq, type=ev["type"],
        subject=ev["subject"], time=ev["time"], hash=digest.hex(), prevhash=ev["prevhash"], sig=ev["sig"],
        body=bytes(payload), signed=signed, digest=digest,
    )


def check_event(payload: bytes, topic_gateway: str, key: PublicKey | None) -> Event:
    """Everything the receiver checks before storing: shape, topic/source agreement, registration, signature."""
    ev = check_shape(payload, topic_gateway, key)
    assert key is not None  # check_shape rejects an unregistered gateway
    if not ev.verify(key):
        raise bad_signature(ev)
    return ev


def check_shape(payload: bytes, topic_gateway: str, key: PublicKey | None) -> Event:
    """`check_event` without the signature: what the receiver checks as it reads (`RunVerifier` checks that)."""
    ev = parse_event(payload)
    if ev.gateway != topic_gateway:
        raise Rejected("wrong_topic",
                       f"event source names gateway {ev.gateway[:80]!r} but came on {topic_gateway!r}'s topic")
    if key is None:
        raise Rejected("unknown_gateway", f"gateway {ev.gateway!r} is not registered (koto-cloud register)")
    return ev


def bad_signature(ev: Event) -> Rejected:
    return Rejected("bad_signature", f"event {ev.id} of {ev.gateway!r} is not signed by its registered key")


@dataclass(frozen=True, slots=True)
class Problem:
    epoch: int
    seq: int
    reason: str


def verify_chain(bodies: Iterable[bytes], key: PublicKey) -> tuple[int, list[Problem]]:
    """Re-verify stored events of one gateway offline: every signature, and every link inside each epoch.

    Returns (events checked, problems). A missing seq is a problem (a gap in what the cloud holds), so is a
    prevhash that is not the hash of the previous record.
    """
    problems: list[Problem] = []
    last: dict[int, tuple[int, str]] = {}
    n = 0
    for body in sorted(bodies, key=_order_key):
        n += 1
        try:
            ev = parse_event(body)
        except Rejected as e:
            problems.append(Problem(-1, -1, e.reason))
            continue
        if not ev.verify(key):
            problems.append(Problem(ev.epoch, ev.seq, "signature does not verify"))
        prev = last.get(ev.epoch)
        if prev is None:
            if ev.seq != 1:
                problems.append(Problem(ev.epoch, ev.seq, f"records 1..{ev.seq - 1} of epoch {ev.epoch} are missing"))
        elif ev.seq != prev[0] + 1:
            problems.append(Problem(ev.epoch, ev.seq, f"records {prev[0] + 1}..{ev.seq - 1} are missing"))
        elif ev.prevhash != prev[1]:
            problems.append(Problem(ev.epoch, ev.seq, "prevhash is not the hash of the previous record"))
        last[ev.epoch] = (ev.seq, ev.hash)
    return n, problems


def _order_key(body: bytes) -> tuple[int, int]:
    try:
        d: Any = json.loads(body)["data"]
        return int(d["epoch"]), int(d["seq"])
    except (ValueError, KeyError, TypeError):
        return (-1, -1)
