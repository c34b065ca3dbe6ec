"""From a draft to the bytes the ledger stores and publishes: the CloudEvent, its chain link and its signature.

The top-level keys of an event are fixed, so its canonical text is assembled from pieces in sorted key order around
the canonical text of `data` (`koto.canonical.canonical_text`, the one fast path the receiver uses too) instead of
sorting a dict per record. The `sig` goes between `sequence` and `source`, its place in sorted order, so the text
without it (what is hashed and signed) and the body with it share every other byte. `verify` re-canonicalises every
stored body with `koto.canonical.canonical_bytes`, and the tests compare every body they make with it, so the
assembly can never drift from the contract.

Pure: no SQL. What the batch needs from the database (the chain head, the spans of cycles already stored) comes in
as arguments from the `Ledger` facade.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from koto.canonical import CanonicalError, canonical_text, json_string, rfc3339_ms
from koto.signing import PrivateKey

from ..errors import LedgerError
from ..records import Draft, RecordKind, TimeStatus
from .store import PARTITION

CYCLE = str(RecordKind.CYCLE)
_TIME_STATUS = frozenset(str(x) for x in TimeStatus)
_MAX_TIME = 253402300800  # 10000-01-01T00:00:00Z: RFC 3339 has four-digit years
_NUMBER = (int, float)

# ECDSA P-256 over SHA-256, given the SHA-256 digest the ledger computes anyway for the record's hash: the same
# signature as `koto.signing.sign_bytes` over the unsigned bytes (which `verify_bytes` checks), without hashing twice.
PREHASHED_ECDSA = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

Row = tuple[Any, ...]  # one `records` row in `store.RECORD_COLS` order
# One prepared record: (row without body, canonical bytes before `"sig"`, sha256 digest of the unsigned bytes,
# canonical bytes after `"sig"`). A plain tuple: it is made once per record on the hot path.
Prepared = tuple[Row, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored record. `body` is exactly what is published (canonical JSON of the event, `sig` included)."""

    seq: int
    id: str
    epoch: int
    type: str
    kind: str
    hash: str
    body: bytes
    acked: bool

    def event(self) -> dict[str, Any]:
        ev: dict[str, Any] = json.loads(self.body)
        return ev


def columns(data: Mapping[str, Any]) -> tuple[str, str, str, str, int, int, int, int, str, str]:
    """The query columns a record's `data` implies: kind, appliance, function, cycle_id, energy, duration, uses,
    cost, currency, entitled. Used both when writing and when verifying, so they cannot disagree."""
    g = data.get
    kind, app, fn, cyc, cur = g("kind", ""), g("appliance", ""), g("function", ""), g("cycle_id", ""), g("currency", "")
    e, d, u, c, ent = g("energy_mwh", 0), g("duration_ms", 0), g("uses", 0), g("cost_minor", 0), g("entitled", "")
    return (
        kind if type(kind) is str else "",
        app if type(app) is str else "",
        fn if type(fn) is str else "",
        cyc if type(cyc) is str else "",
        e if type(e) is int else 0,
        d if type(d) is int else 0,
        u if type(u) is int else 0,
        c if type(c) is int else 0,
        cur if type(cur) is str else "",
        ent if type(ent) is str else "",
    )


def cycles_named(drafts: Sequence[Draft]) -> set[str]:
    """The cycle ids that the batch's `cycle` drafts name: the cycles whose stored spans `prepare` needs."""
    wanted: set[str] = set()
    for d in drafts:
        data = d.data
        if data.get("kind") == CYCLE:
            cid = data.get("cycle_id", d.cycle_id)
            if type(cid) is str and cid:
                wanted.add(cid)
    return wanted


class Envelope:
    """How one ledger's drafts become signed events: its epoch, source and default subject, fixed at open."""

    def __init__(self, *, epoch: int, gateway_id: str, gateway_subject: str) -> None:
        self.epoch = epoch
        self.source = f"urn:koto:gw:{gateway_id}"
        self._source_js = json_string(self.source)
        self._subject_js = json_string(gateway_subject)
        self._id_prefix = f"{epoch}-"
        self._literals: dict[str, str] = {}  # type or subject -> its JSON literal: a gateway uses a handful of each

    def _literal(self, text: str) -> str:
        """`json_string(text)`, remembered (`prepare` looks in `_literals` first and calls this on a miss)."""
        if len(self._literals) >= 1024:
            self._literals.clear()
        literal = self._literals[text] = json_string(text)
        return literal

    def prepare(
        self,
        drafts: Sequence[Draft],
        head_seq: int,
        head_hash: str,
        stored_spans: Mapping[str, tuple[int, int]],
    ) -> list[Prepared]:
        """Validate, number, build and chain a batch after the head (`head_seq`, `head_hash`): per record its row
        (without body), the canonical bytes around the place of `sig`, and the sha256 digest of the unsigned
        canonical bytes (whose hex is the record's hash). `stored_spans` are `store.cycle_spans` of
        `cycles_named(drafts)`. The chain needs only hashes, so nothing here waits for a signature."""
        epoch = self.epoch
        id_prefix = self._id_prefix
        literal = self._literals.get
        sha256 = hashlib.sha256
        in_batch: dict[str, list[int]] = {}  # cycle id -> [min, max] seq of its partition records in this batch
        out: list[Prepared] = []
        prev = head_hash
        seq = head_seq
        for i, d in enumerate(drafts):
            seq += 1
            data = dict(d.data)
            if d.cycle_id and "cycle_id" not in data:
                data["cycle_id"] = d.cycle_id
            kind, app, fn, cid, energy, dur, uses, cost, cur, ent = columns(data)
            if cid:
                _note_cycle(data, kind, cid, seq, in_batch, stored_spans)
            data["epoch"] = epoch
            data["seq"] = seq
            try:
                data_text = canonical_text(data, where="data")
            except CanonicalError as e:
                raise LedgerError(f"draft {i}: {e}") from e
            t_ms = _check_draft(d, i)
            subject_js = (literal(d.subject) or self._literal(d.subject)) if d.subject else self._subject_js
            type_js = literal(d.type) or self._literal(d.type)
            rid = f"{id_prefix}{seq}"
            head = (
                f'{{"data":{data_text},"datacontenttype":"application/json","id":"{rid}",'
                f'"prevhash":"{prev}","sequence":"{seq:020d}"'
            )
            tail = (
                f',"source":{self._source_js},"specversion":"1.0","subject":{subject_js},'
                f'"time":"{rfc3339_ms(t_ms)}","timestatus":"{d.time_status}","type":{type_js}}}'
            )
            head_b, tail_b = head.encode(), tail.encode()
            digest = sha256(head_b + tail_b).digest()
            prev = digest.hex()
            row = (seq, rid, d.type, kind, app, fn, cid, t_ms, energy, dur, uses, cost, cur, ent, prev)
            out.append((row, head_b, digest, tail_b))
        return out

    def seal(self, prepared: Sequence[Prepared], key: PrivateKey) -> tuple[list[Row], list[Stored]]:
        """Sign each prepared record over the digest already computed for its hash and assemble its body around the
        signature (base64 DER): the insert rows and the `Stored` values, in the same order."""
        sign = key.sign
        b64 = binascii.b2a_base64
        epoch = self.epoch
        rows: list[Row] = []
        stored: list[Stored] = []
        for cols, head, digest, tail in prepared:
            body = b"".join((head, b',"sig":"', b64(sign(digest, PREHASHED_ECDSA), newline=False), b'"', tail))
            rows.append((*cols, body))
            stored.append(Stored(cols[0], cols[1], epoch, cols[2], cols[3], cols[14], body, False))
        return rows, stored


def _note_cycle(
    data: dict[str, Any],
    kind: str,
    cid: str,
    seq: int,
    in_batch: dict[str, list[int]],
    stored_spans: Mapping[str, tuple[int, int]],
) -> None:
    """Track the seqs of a cycle's partition records; give a `cycle` record the first and last of them (stored or
    earlier in the batch) as `first_seq`/`last_seq`, or neither when the cycle has none."""
    if kind in PARTITION:
        span = in_batch.get(cid)
        if span is None:
            in_batch[cid] = [seq, seq]
        else:
            span[1] = seq
    elif kind == CYCLE:
        first, last = stored_spans.get(cid, (0, 0))
        here = in_batch.get(cid)
        if here:
            first = min(first, here[0]) if first else here[0]
            last = max(last, here[1])
        if first:
            data["first_seq"] = first
            data["last_seq"] = last


def _check_draft(d: Draft, i: int) -> int:
    """The draft's envelope fields are usable; returns its time in integer milliseconds."""
    typ = d.type
    t = d.time
    if type(typ) is not str or not typ:
        raise LedgerError(f"draft {i}: type must be a non-empty string")
    if not isinstance(t, _NUMBER) or not (0 <= t < _MAX_TIME):
        raise LedgerError(f"draft {i} ({typ}): time {t!r} is not a wall time in seconds")
    if d.time_status not in _TIME_STATUS:
        raise LedgerError(f"draft {i} ({typ}): time status {d.time_status!r}; allowed: S, U")
    return round(t * 1000)
