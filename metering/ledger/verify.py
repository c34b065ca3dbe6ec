"""Walking the stored chain offline (`koto verify`): every record's bytes, links, columns and signature.

Every record is checked in full: its body parses and is exactly its canonical form, its id, seq and envelope agree
with the row and the database, its stored hash and query columns match the body, its `prevhash` links to the record
before, and its own ECDSA signature verifies (unlike the receiver, which may let one signature vouch for a run, a
local verify must catch a damaged `sig` anywhere). The body is re-canonicalised with `koto.canonical.canonical_text`,
whose equivalence to the definition (`canonical_bytes`) tests/koto/test_canonical.py checks over generated values.

Scale: the ECDSA verification (~90 us a record on the 2-core build machine, ~70 on a Pi 4 core) dominates, so a big
ledger is checked in chunks of `CHUNK` records by a pool of worker processes, one per core, each reading its own
rows; the chunks' edges are linked here, in seq order, so the first bad record is still the one named. `progress`
is called with (checked, total) as chunks finish. Small ledgers are checked in this process.
"""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from koto.canonical import CanonicalError, NotCanonical, parse_canonical, parse_rfc3339, rfc3339_ms
from koto.signing import PublicKey, load_public_key

from .envelope import PREHASHED_ECDSA, columns
from .store import K_ACKED, K_ANCHOR_PREV, K_ANCHOR_SEQ, K_HEAD_HASH, K_HEAD_SEQ, RECORD_COLS

CHUNK = 5000
PARALLEL_FROM = 20_000  # below this many records, starting worker processes costs more than it saves
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    first_seq: int = 0
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What a worker found in seqs lo..hi: how many records were sound, and the first problem."""

    lo: int
    hi: int
    checked: int
    last_hash: str = ""
    bad_seq: int | None = None
    reason: str = ""


def verify_chain(conn: sqlite3.Connection, epoch: int, source: str, public_key: PublicKey, *, path: Path | None = None,
                 workers: int | None = None, progress: Progress | None = None, chunk: int = CHUNK,
                 from_seq: int | None = None) -> VerifyReport:
    """Walk every stored record from the anchor (or from `from_seq`, linked to the stored hash of the record before
    it: a quick check of the recent part) and check it (module docstring); then the chain head and the ack
    cursor must agree with what is stored. With `path` (the database file) a big ledger is checked in chunks of
    `chunk` records by `workers` processes (default: one per core, from PARALLEL_FROM records; given explicitly, a
    pool whatever the size). A file SQLite cannot read is reported, not raised."""
    try:
        return _walk(conn, epoch, source, public_key, path, workers, progress, chunk, from_seq)
    except sqlite3.DatabaseError as e:
        return VerifyReport(False, 0, None, f"the database file is damaged ({e})")


def _walk(conn: sqlite3.Connection, epoch: int, source: str, public_key: PublicKey, path: Path | None,
          workers: int | None, progress: Progress | None, chunk: int, from_seq: int | None) -> VerifyReport:
    kv = dict(conn.execute("SELECT key, value FROM kv").fetchall())
    try:
        anchor_seq, anchor_prev = int(kv[K_ANCHOR_SEQ]), str(kv[K_ANCHOR_PREV])
        head_seq, head_hash, acked = int(kv[K_HEAD_SEQ]), str(kv[K_HEAD_HASH]), int(kv[K_ACKED])
    except (KeyError, ValueError) as e:
        return VerifyReport(False, 0, None, f"ledger settings are damaged ({e})")
    lo, hi = conn.execute("SELECT min(seq), max(seq) FROM records").fetchone()
    if lo is not None and lo < anchor_seq:
        return VerifyReport(False, 0, lo, f"seq {anchor_seq} is missing (next stored is {lo})", anchor_seq,
                            anchor_seq - 1)
    last_stored = max(hi if hi is not None else 0, anchor_seq - 1)
    if from_seq is not None and from_seq > anchor_seq:
        from_seq = min(from_seq, last_stored + 1)
        row = conn.execute("SELECT hash FROM records WHERE seq=?", (from_seq - 1,)).fetchone()
        if row is None:
            return VerifyReport(False, 0, from_seq - 1, f"seq {from_seq - 1} is missing", anchor_seq, from_seq - 2)
        anchor_seq, anchor_prev = from_seq, str(row[0])
    total = last_stored - anchor_seq + 1
    ranges = [(lo, min(lo + chunk - 1, last_stored)) for lo in range(anchor_seq, last_stored + 1, chunk)]
    job = _Job(str(path) if path is not None else "", epoch, source, anchor_seq, anchor_prev)
    checked = 0
    last_hash = anchor_prev
    for found in _chunks(conn, ranges, job, public_key, workers, total):
        checked += found.checked
        if found.bad_seq is not None:
            return VerifyReport(False, checked, found.bad_seq, found.reason, anchor_seq, found.bad_seq - 1)
        last_hash = found.last_hash
        if progress is not None:
            progress(checked, total)
    last = anchor_seq + checked - 1
    if last != head_seq:
        seq = last + 1 if last < head_seq else last
        return VerifyReport(False, checked, seq, f"chain head says seq {head_seq}, last stored is {last}",
                            anchor_seq, last)
    if checked and last_hash != head_hash:
        return VerifyReport(False, checked, last, "chain head hash does not match the last record", anchor_seq, last)
    if acked > head_seq:
        return VerifyReport(False, checked, None, f"acked_through {acked} is beyond the head {head_seq}", anchor_seq,
                            last)
    return VerifyReport(True, checked, None, "ok", anchor_seq if checked else 0, last)


@dataclass(frozen=True, slots=True)
class _Job:
    """What every chunk's check needs besides its seq range (picklable: it goes to worker processes)."""

    path: str
    epoch: int
    source: str
    anchor_seq: int
    anchor_prev: str


def _chunks(conn: sqlite3.Connection, ranges: list[tuple[int, int]], job: _Job, key: PublicKey,
            workers: int | None, total: int) -> Iterator[_Chunk]:
    """The chunks' findings in seq order: from a process pool for a big ledger on disk, else from `conn` here."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    if not job.path or n <= 1 or (workers is None and total < PARALLEL_FROM):
        for lo, hi in ranges:
            yield _check_chunk(conn, lo, hi, job, key)
        return
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # spawn, not fork: the parent holds SQLite connections and locks that a forked child must not inherit.
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        yield from pool.imap(_worker, [(job, lo, hi, pem) for lo, hi in ranges])


def _worker(task: tuple[_Job, int, int, bytes]) -> _Chunk:
    job, lo, hi, pem = task
    conn = sqlite3.connect(f"file:{job.path}?mode=ro", uri=True)
    try:
        return _check_chunk(conn, lo, hi, job, load_public_key(pem))
    finally:
        conn.close()


def _check_chunk(conn: sqlite3.Connection, lo: int, hi: int, job: _Job, key: PublicKey) -> _Chunk:
    """Check seqs lo..hi, each linked to the one before. The record before `lo` belongs to the previous chunk, which
    checks that its stored hash is its true hash; so its stored hash is what `lo` must link to (if it is not sound,
    the previous chunk reports it first)."""
    if lo == job.anchor_seq:
        prev = job.anchor_prev
    else:
        row = conn.execute("SELECT hash FROM records WHERE seq=?", (lo - 1,)).fetchone()
        prev = str(row[0]) if row is not None else ""
    expected = lo
    epoch, source, check = job.epoch, job.source, _check_record
    rows = conn.execute(f"SELECT {RECORD_COLS} FROM records WHERE seq>=? AND seq<=? ORDER BY seq", (lo, hi))
    for row in rows:
        seq = row[0]
        if seq != expected:
            return _Chunk(lo, hi, expected - lo, prev, expected, f"seq {expected} is missing (next stored is {seq})")
        reason, prev = check(row, epoch, source, prev, key)
        if reason:
            return _Chunk(lo, hi, seq - lo, "", seq, reason)
        expected += 1
    if expected <= hi:  # the range ends at or below the last stored seq, so a later record exists
        (nxt,) = conn.execute("SELECT min(seq) FROM records WHERE seq>?", (expected,)).fetchone()
        return _Chunk(lo, hi, expected - lo, prev, expected, f"seq {expected} is missing (next stored is {nxt})")
    return _Chunk(lo, hi, hi - lo + 1, prev)


def _check_record(row: tuple[Any, ...], epoch: int, source: str, prev: str, key: PublicKey) -> tuple[str, str]:
    """Every check on one stored row; returns (reason, hash), reason empty when the record is sound. The hot path of
    `koto verify` (a million times on a big ledger): each value is looked at once, and messages are built only for
    a record that fails."""
    seq, rid, typ, kind, app, fn, cyc, t_ms, e, dur, uses, cost, cur, h, body = row
    event, reason = _parse_body(body)
    if event is None:
        return reason, ""
    sig = event.pop("sig", None)
    raw_sig = _canonical_b64(sig) if isinstance(sig, str) else None
    if raw_sig is None:
        return "signature is missing or not canonical base64", ""
    data = event.get("data")
    if not isinstance(data, dict):
        return "data is missing", ""
    g = event.get
    if not (g("specversion") == "1.0" and rid == f"{epoch}-{seq}" and g("id") == rid and g("source") == source
            and g("sequence") == f"{seq:020d}" and data.get("epoch") == epoch and data.get("seq") == seq
            and g("datacontenttype") == "application/json" and g("timestatus") in ("S", "U")
            and isinstance(g("subject"), str)):
        return _check_envelope(event, data, seq, rid, epoch, source) or "envelope does not match the row", ""
    if g("prevhash") != prev:
        return "prevhash does not link to the previous record", ""
    digest = hashlib.sha256(_unsigned(body, sig)).digest()
    if digest.hex() != h:
        return "stored hash does not match the record", ""
    if not _time_matches(g("time"), t_ms):
        return "time column does not match the record", ""
    if typ != g("type") or (kind, app, fn, cyc, e, dur, uses, cost, cur) != columns(data):
        return "query columns do not match the record", ""
    try:
        key.verify(raw_sig, digest, PREHASHED_ECDSA)
    except (InvalidSignature, ValueError):
        return "signature does not verify", ""
    return "", h


def _time_matches(text: object, t_ms: int) -> bool:
    """The event's `time` names the instant of the `t_end_ms` column. The ledger writes it as `rfc3339_ms(t_ms)`,
    so that comparison answers almost always; any other spelling is parsed (RFC 3339 allows several)."""
    if not isinstance(text, str):
        return False
    try:
        if type(t_ms) is int and text == rfc3339_ms(t_ms):
            return True
    except (OverflowError, ValueError, OSError):  # a column value no clock can show: compared by parsing below
        pass
    try:
        return round(parse_rfc3339(text) * 1000) == t_ms
    except ValueError:
        return False


def _unsigned(body: bytes, sig: str) -> bytes:
    """The canonical bytes of the event without `sig`, cut out of the canonical body (checked by `_parse_body`)
    instead of encoding the event a second time. The top-level `"sig"` member is the last `,"sig":"` in the body:
    a nested `sig` key can only be inside `data`, which sorts before it, and the members after it are strings, in
    which a quote is always escaped."""
    member = b',"sig":"' + sig.encode("ascii") + b'"'
    i = body.rindex(b',"sig":"')
    return body[:i] + body[i + len(member):]


def _parse_body(body: object) -> tuple[dict[str, Any] | None, str]:
    """The stored body as an event, when it is a JSON object in exactly its canonical form; else (None, reason)."""
    if not isinstance(body, bytes):
        return None, "body is not stored as bytes"
    try:
        return parse_canonical(body), ""
    except NotCanonical as ex:
        return None, f"body is {ex}"
    except CanonicalError as ex:
        return None, f"body has no canonical form ({ex})"
    except ValueError as ex:  # UnicodeDecodeError, json.JSONDecodeError
        return None, f"body does not parse ({ex})"


def _check_envelope(event: dict[str, Any], data: dict[str, Any], seq: int, rid: str, epoch: int, source: str) -> str:
    """What in the CloudEvent's attributes disagrees with the row and the database, or "" (called to name the
    problem once the quick test in `_check_record` failed)."""
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


def _canonical_b64(sig: str) -> bytes | None:
    """The signature's bytes when `sig` is the one canonical base64 spelling of them (padding bits zero, no stray
    characters), else None.

    Python's decoder ignores the unused low bits of the last character, so without this check a flipped bit there
    would decode to the same signature and go unnoticed."""
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return None
    return raw if base64.b64encode(raw).decode("ascii") == sig else None
