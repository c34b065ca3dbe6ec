"""Walking the stored chain offline (`koto verify`): every record's bytes, links, columns and signature.

Deliberately the slow, literal reading of the contract: each body is re-canonicalised with
`koto.canonical.canonical_bytes` (the definition, not the writer's fast path) and re-hashed, so a shortcut in the
writer that drifted from the contract would fail here. Stops at the first bad record and names it.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from koto.canonical import CanonicalError, canonical_bytes, parse_rfc3339, sha256_hex
from koto.signing import PublicKey, verify_bytes

from .envelope import columns
from .store import K_ACKED, K_ANCHOR_PREV, K_ANCHOR_SEQ, K_HEAD_HASH, K_HEAD_SEQ, RECORD_COLS


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    first_seq: int = 0
    last_seq: int = 0


def verify_chain(conn: sqlite3.Connection, epoch: int, source: str, public_key: PublicKey) -> VerifyReport:
    """Walk every stored record from the anchor: body parses and is canonical, ids and seqs are contiguous and
    consistent, prevhash links, the stored hash and every query column match the body, the signature verifies; then
    the chain head and the ack cursor agree with what is stored. A file SQLite cannot read is reported, not raised."""
    try:
        return _walk(conn, epoch, source, public_key)
    except sqlite3.DatabaseError as e:
        return VerifyReport(False, 0, None, f"the database file is damaged ({e})")


def _walk(conn: sqlite3.Connection, epoch: int, source: str, public_key: PublicKey) -> VerifyReport:
    kv = dict(conn.execute("SELECT key, value FROM kv").fetchall())
    try:
        anchor_seq = int(kv[K_ANCHOR_SEQ])
        prev = str(kv[K_ANCHOR_PREV])
        head_seq = int(kv[K_HEAD_SEQ])
        head_hash = str(kv[K_HEAD_HASH])
        acked = int(kv[K_ACKED])
    except (KeyError, ValueError) as e:
        return VerifyReport(False, 0, None, f"ledger settings are damaged ({e})")
    expected = anchor_seq
    checked = 0

    def bad(seq: int, reason: str) -> VerifyReport:
        return VerifyReport(False, checked, seq, reason, anchor_seq, expected - 1)

    cur = conn.execute(f"SELECT {RECORD_COLS} FROM records ORDER BY seq")
    while batch := cur.fetchmany(500):
        for row in batch:
            seq = row[0]
            if seq != expected:
                return bad(min(seq, expected), f"seq {expected} is missing (next stored is {seq})")
            reason, h = _check_record(row, epoch, source, prev, public_key)
            if reason:
                return bad(seq, reason)
            prev = h
            expected += 1
            checked += 1
    last = expected - 1
    if last != head_seq:
        return bad(last + 1 if last < head_seq else last, f"chain head says seq {head_seq}, last stored is {last}")
    if checked and prev != head_hash:
        return bad(last, "chain head hash does not match the last record")
    if acked > head_seq:
        reason = f"acked_through {acked} is beyond the head {head_seq}"
        return VerifyReport(False, checked, None, reason, anchor_seq, last)
    return VerifyReport(True, checked, None, "ok", anchor_seq if checked else 0, last)


def _check_record(row: tuple[Any, ...], epoch: int, source: str, prev: str, public_key: PublicKey) -> tuple[str, str]:
    """Every check on one stored row; returns (reason, hash), reason empty when the record is sound."""
    seq, rid, typ, kind, app, fn, cyc, t_ms, e, dur, uses, cost, cur, h, body = row
    event, reason = _parse_body(body)
    if event is None:
        return reason, ""
    sig = event.pop("sig", None)
    if not isinstance(sig, str) or not _canonical_b64(sig):
        return "signature is missing or not canonical base64", ""
    data = event.get("data")
    if not isinstance(data, dict):
        return "data is missing", ""
    reason = _check_envelope(event, data, seq, rid, epoch, source)
    if reason:
        return reason, ""
    if event.get("prevhash") != prev:
        return "prevhash does not link to the previous record", ""
    unsigned = canonical_bytes(event)
    digest = sha256_hex(unsigned)
    if digest != h:
        return "stored hash does not match the record", ""
    try:
        t_ok = round(parse_rfc3339(str(event.get("time"))) * 1000) == t_ms
    except ValueError:
        t_ok = False
    if not t_ok:
        return "time column does not match the record", ""
    if typ != event.get("type") or (kind, app, fn, cyc, e, dur, uses, cost, cur) != columns(data):
        return "query columns do not match the record", ""
    if not verify_bytes(public_key, unsigned, sig):
        return "signature does not verify", ""
    return "", digest


def _parse_body(body: object) -> tuple[dict[str, Any] | None, str]:
    """The stored body as an event, when it is a JSON object in exactly its canonical form; else (None, reason)."""
    if not isinstance(body, bytes):
        return None, "body is not stored as bytes"
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as ex:
        return None, f"body does not parse ({ex})"
    if not isinstance(event, dict):
        return None, "body is not a JSON object"
    try:
        if canonical_bytes(event) != body:
            return None, "body is not in canonical form"
    except CanonicalError as ex:
        return None, f"body has no canonical form ({ex})"
    return event, ""


def _check_envelope(event: dict[str, Any], data: dict[str, Any], seq: int, rid: str, epoch: int, source: str) -> str:
    """The CloudEvent attributes agree with the row and the database; returns what does not, or ""."""
    want_id = f"{epoch}-{seq}"
    checks = (
        (event.get("specversion") == "1.0", "specversion"),
        (event.get("id") == want_id, f"id is not {want_id}"),
        (rid == want_id, "id column does not match"),
        (event.get("source") == source, f"source is not {source}"),
        (event.get("sequence") == f"{seq:020d}", "sequence does not match seq"),
        (data.get("epoch") == epoch and data.get("seq") == seq, "data.epoch/data.seq do not match"),
        (event.get("datacontenttype") == "application/json", "datacontenttype"),
        (event.get("timestatus") in ("S", "U"), "timestatus"),
        (isinstance(event.get("subject"), str), "subject"),
    )
    for ok, what in checks:
        if not ok:
            return what
    return ""


def _canonical_b64(sig: str) -> bool:
    """True when `sig` is the one canonical base64 spelling of its bytes (padding bits zero, no stray characters).

    Python's decoder ignores the unused low bits of the last character, so without this check a flipped bit there
    would decode to the same signature and go unnoticed."""
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return False
    return base64.b64encode(raw).decode("ascii") == sig
