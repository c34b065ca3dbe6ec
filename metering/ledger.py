"""The ledger: an append-only, hash-chained, signed record store in SQLite, and the gateway's outbox cursor.

Why it looks the way it does:

- **Durable before reported.** Every `append` is one SQLite transaction (WAL, `synchronous=FULL`): the records, the
  meter checkpoints that produced them and any documents or settings are committed together, so after a crash the
  meter resumes from a checkpoint that matches the last stored record exactly. One fsync per batch, not per record.
- **The stored bytes are the published bytes.** Each record's `body` is the canonical (JCS) JSON of its CloudEvent,
  signature included. The sync publishes `body` as is, so a resend is byte-identical and the receiver's checks are
  the same ones `verify` runs here.
- **Tamper evident.** `hash = sha256(canonical bytes of the event without sig)`, the next record's `prevhash` is that
  hash, and `sig` is ECDSA P-256 over the same bytes. The columns beside `body` (kind, appliance, energy, ...) are
  derived from it for queries, and `verify` checks they still agree, so no single changed byte goes unnoticed.
- **Nothing leaves before the cloud has it.** `mark_acked` moves a cumulative cursor only when the cloud's
  `head_hash` equals our own hash of that record; `prune` deletes only acked records older than the retention and
  never the chain head, leaving an anchor (the first kept seq and its prevhash) that `verify` starts from.

Acked state is the single cursor `acked_through` (records are acked as a prefix), not a per-row flag: an ack then
costs one small write instead of rewriting every acked record's page, which matters on an SD card.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import Enum
from json.encoder import encode_basestring
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from koto.canonical import MAX_SAFE_INT, ZERO_HASH, CanonicalError, canonical_bytes, parse_rfc3339, sha256_hex
from koto.signing import PrivateKey, PublicKey, verify_bytes

from .errors import LedgerError
from .records import PARTITION_KINDS, USAGE_TYPE, Draft, RecordKind, TimeStatus

__all__ = [
    "SCHEMA_VERSION",
    "AckOutcome",
    "Doc",
    "Ledger",
    "Stored",
    "UsageRow",
    "VerifyReport",
    "read_gateway_id",
]

SCHEMA_VERSION = 1

# Keys of the kv table that the ledger owns; `kv_set` refuses them so nothing outside can move the chain or cursor.
_K_GATEWAY = "gateway_id"
_K_SUBJECT = "gateway_subject"
_K_EPOCH = "epoch"
_K_HEAD_SEQ = "head_seq"
_K_HEAD_HASH = "head_hash"
_K_ACKED = "acked_through"
_K_ANCHOR_SEQ = "anchor_seq"
_K_ANCHOR_PREV = "anchor_prevhash"
_K_SCHEMA = "schema_version"
RESERVED_KV = frozenset(
    {_K_GATEWAY, _K_SUBJECT, _K_EPOCH, _K_HEAD_SEQ, _K_HEAD_HASH, _K_ACKED, _K_ANCHOR_SEQ, _K_ANCHOR_PREV, _K_SCHEMA}
)

_PARTITION = tuple(str(k) for k in PARTITION_KINDS)
_CYCLE = str(RecordKind.CYCLE)

# The schema. `records` columns beside `body` and `hash` are copies of fields inside `body`, kept for queries and
# checked by `verify`. Times as integer milliseconds so the copy is exact.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    appliance   TEXT    NOT NULL,
    function    TEXT    NOT NULL,
    cycle_id    TEXT    NOT NULL,
    t_end_ms    INTEGER NOT NULL,
    energy_mwh  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    cost_minor  INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    body        BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS records_cycle ON records(cycle_id) WHERE cycle_id != '';
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_RECORD_COLS = (
    "seq, id, type, kind, appliance, function, cycle_id, t_end_ms, energy_mwh, duration_ms, uses, cost_minor, "
    "currency, hash, body"
)
INSERT_SQL = f"INSERT INTO records ({_RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=10000")

# `json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode` without re-making the C
# encoder on every call (what `JSONEncoder.encode` does): the same bytes, ~1 us less per record. The tests compare
# every body with `canonical_bytes`, and `verify` re-canonicalises every stored body.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encoder: Any = None
if _c_make_encoder is not None:  # (markers, default, encoder, indent, key sep, item sep, sort_keys, skipkeys, nan)
    _c_encoder = _c_make_encoder(None, None, encode_basestring, None, ":", ",", True, False, True)
_py_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _encode_data(data: dict[str, Any]) -> str:
    if _c_encoder is None:
        return _py_encoder.encode(data)
    return "".join(_c_encoder(data, 0))


# ECDSA P-256 over SHA-256, given the SHA-256 digest the ledger computes anyway for the record's hash: the same
# signature as `koto.signing.sign_bytes` over the unsigned bytes (which `verify_bytes` checks), without hashing twice.
_PREHASHED_ECDSA = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

# One prepared record: (row without body, canonical text before `"sig"`, sha256 digest of the unsigned bytes,
# canonical text after `"sig"`).
_Prepared = tuple[tuple[Any, ...], str, bytes, str]


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection with the ledger's pragmas (also used by the benchmark's raw-SQLite baseline)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    return conn


class AckOutcome(Enum):
    ADVANCED = "advanced"  # the cursor moved to `through`
    ALREADY = "already"  # `through` is at or below the cursor: a duplicate or late ack, nothing to do
    MISMATCH = "mismatch"  # the cloud's head_hash is not our hash of that record: an alarm, nothing is marked
    WRONG_EPOCH = "wrong_epoch"  # an ack for another epoch (an older database of this gateway)
    BEYOND_HEAD = "beyond_head"  # the cloud claims records we never wrote


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


@dataclass(frozen=True, slots=True)
class Doc:
    """A versioned document from the cloud (tariff, entitlement, profile), stored beside the records."""

    kind: str
    id: str
    version: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    first_seq: int = 0
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of `koto usage`: a group's energy (partition records), time, uses (cycle records) and cost."""

    appliance: str
    key: str  # the function, the local day (YYYY-MM-DD) or the cycle id, depending on `by`
    energy_mwh: int
    duration_ms: int
    uses: int
    costs: tuple[tuple[str, int], ...]  # (currency, minor units), sorted by currency; never summed across currencies
    records: int

    @property
    def currency(self) -> str:
        return self.costs[0][0] if len(self.costs) == 1 else ""

    @property
    def cost_minor(self) -> int:
        return self.costs[0][1] if len(self.costs) == 1 else 0


def read_gateway_id(path: Path | str) -> str:
    """The gateway id a ledger file belongs to (for tools that are handed a file), without opening it for writing."""
    p = Path(path)
    if not p.exists():
        raise LedgerError(f"{p}: no ledger at this path")
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM kv WHERE key=?", (_K_GATEWAY,)).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"{p}: not a Koto ledger ({e})") from e
    if row is None:
        raise LedgerError(f"{p}: not a Koto ledger (no gateway id)")
    return str(row[0])


# --------------------------------------------------------------------------------------------------------------
# Building events. The top-level keys of an event are fixed, so its canonical bytes are assembled from pieces in
# sorted key order instead of sorting a dict per record; `verify` and the tests check the result against
# `canonical_bytes`, so the shortcut can never drift from the contract.


def _js(s: str) -> str:
    return encode_basestring(s)


def _check_data(data: Mapping[str, Any], index: int) -> None:
    """Strings and integers only (the canonical form): a fast pass over flat values, the full check otherwise."""
    for v in data.values():
        t = type(v)
        if t is str or (t is int and -MAX_SAFE_INT <= v <= MAX_SAFE_INT):
            continue
        break
    else:
        return
    for k, v in data.items():
        t = type(v)
        if t is str or (t is int and -MAX_SAFE_INT <= v <= MAX_SAFE_INT):
            continue
        if t in (dict, list, tuple):
            try:
                canonical_bytes({k: v})
            except CanonicalError as e:
                raise LedgerError(f"draft {index}: data.{k}: {e}") from e
            continue
        raise LedgerError(f"draft {index}: data.{k}: {t.__name__} {v!r} is not allowed (strings and integers only)")


def _columns(data: Mapping[str, Any]) -> tuple[str, str, str, str, int, int, int, int, str]:
    """The query columns a record's `data` implies: kind, appliance, function, cycle_id, energy, duration, uses,
    cost, currency. Used both when writing and when verifying, so they cannot disagree."""
    g = data.get
    kind, app, fn, cyc, cur = g("kind", ""), g("appliance", ""), g("function", ""), g("cycle_id", ""), g("currency", "")
    e, d, u, c = g("energy_mwh", 0), g("duration_ms", 0), g("uses", 0), g("cost_minor", 0)
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
    )


_TIME_STATUS = frozenset(str(x) for x in TimeStatus)


_DAY_PREFIX: dict[int, str] = {}  # days since 1970 -> "YYYY-MM-DDT" (a gateway sees few distinct days)


def _rfc3339_ms(ms: int) -> str:
    """`koto.canonical.rfc3339` for integer milliseconds, without a datetime per call (tests check they agree)."""
    s, frac = divmod(ms, 1000)
    day, sod = divmod(s, 86400)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        tm = time.gmtime(day * 86400)
        prefix = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        if len(_DAY_PREFIX) >= 1024:
            _DAY_PREFIX.clear()
        _DAY_PREFIX[day] = prefix
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    return f"{prefix}{hh:02d}:{mm:02d}:{ss:02d}.{frac:03d}Z"


def _ms_of(time_text: str) -> int:
    return round(parse_rfc3339(time_text) * 1000)


def _canonical_b64(sig: str) -> bool:
    """True when `sig` is the one canonical base64 spelling of its bytes (padding bits zero, no stray characters).

    Python's decoder ignores the unused low bits of the last character, so without this check a flipped bit there
    would decode to the same signature and go unnoticed."""
    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return False
    return base64.b64encode(raw).decode("ascii") == sig


def _assemble(prepared: list[_Prepared], sigs: Sequence[str], epoch: int) -> tuple[list[tuple[Any, ...]], list[Stored]]:
    """Insert rows and `Stored` values from prepared records and their signatures (base64 DER), in the same order."""
    if len(sigs) != len(prepared):
        raise LedgerError(f"{len(sigs)} signatures for {len(prepared)} records")
    rows: list[tuple[Any, ...]] = []
    stored: list[Stored] = []
    for (cols, head, _, tail), sig in zip(prepared, sigs, strict=True):
        body = f'{head},"sig":"{sig}"{tail}'.encode()
        rows.append((*cols, body))
        stored.append(Stored(cols[0], cols[1], epoch, cols[2], cols[3], cols[13], body, False))
    return rows, stored


# --------------------------------------------------------------------------------------------------------------


class Ledger:
    """The gateway's ledger database. Open with `Ledger.open(...)`; use as a context manager or call `close()`.

    One process writes (it holds an advisory lock on `<db>.lock`); any number may read (`key=None`), e.g.
    `koto usage` and `koto verify` while the daemon runs. Methods are thread-safe (one internal lock), so the
    daemon may call `append` from a worker thread to keep the fsync off its event loop.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        gateway_id: str,
        key: PrivateKey | None,
        gateway_subject: str,
        epoch: int,
        lock_fd: int | None,
    ) -> None:
        self._conn = conn
        self.path = path
        self.gateway_id = gateway_id
        self.gateway_subject = gateway_subject
        self.epoch = epoch
        self._key = key
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._source = f"urn:koto:gw:{gateway_id}"
        self._id_prefix = f"{epoch}-"
        self._closed = False

    # ---------------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        gateway_id: str,
        key: PrivateKey | None,
        gateway_subject: str | None = None,
        epoch: int | None = None,
    ) -> Ledger:
        """Open (with a key: create if missing) the ledger at `path` for `gateway_id`.

        `key=None` opens an existing ledger for reading (queries, `verify`, acks and settings, but no `append`).
        `epoch` is used only when the database is created (default: the wall clock's seconds, the only time the
        ledger reads a clock, and never for a record); given for an existing database it must match.
        """
        p = Path(path)
        if not gateway_id:
            raise LedgerError(f"{p}: a gateway id is required")
        if key is None and not p.exists():
            raise LedgerError(f"{p}: no ledger at this path (run `koto provision` or start the gateway first)")
        lock_fd: int | None = None
        if key is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_writer_lock(p)
        try:
            conn = connect(p)
        except sqlite3.Error as e:
            _release_lock(lock_fd)
            raise LedgerError(f"{p}: cannot open the ledger database ({e})") from e
        try:
            gw, subject, ep = _init_db(conn, p, gateway_id, gateway_subject, epoch, create=key is not None)
        except BaseException:
            conn.close()
            _release_lock(lock_fd)
            raise
        return cls(conn, p, gateway_id=gw, key=key, gateway_subject=subject, epoch=ep, lock_fd=lock_fd)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        return self._key is None

    # ---------------------------------------------------------------------------------------------- append

    def append(
        self,
        drafts: Sequence[Draft],
        *,
        checkpoints: Mapping[str, Mapping[str, Any]] | None = None,
        docs: Sequence[Doc] | None = None,
        kv: Mapping[str, str] | None = None,
    ) -> list[Stored]:
        """Append `drafts` as records, and store `checkpoints`, `docs` and `kv`, all in ONE transaction.

        Either everything is committed (and fsynced) or nothing is. For a `cycle` draft with a cycle id the ledger
        fills `first_seq`/`last_seq` from the partition records of that cycle already stored or earlier in the
        batch. Returns the stored records in seq order.
        """
        if self._key is None:
            raise LedgerError(f"{self.path}: opened without the device key; cannot append records")
        if kv:
            self._check_kv_keys(kv)
        ckpt_rows = [(name, json.dumps(state, sort_keys=True)) for name, state in (checkpoints or {}).items()]
        doc_rows = [_doc_row(d) for d in docs or ()]
        with self._mutex:
            self._check_open()
            conn = self._conn
            with self._transaction("append failed, nothing was stored"):
                head_seq, head_hash = self._head_in_tx()
                stored = self._append_records(drafts, head_seq, head_hash) if drafts else []
                if stored:
                    last = stored[-1]
                    conn.executemany(
                        "UPDATE kv SET value=? WHERE key=?",
                        ((str(last.seq), _K_HEAD_SEQ), (last.hash, _K_HEAD_HASH)),
                    )
                if ckpt_rows:
                    conn.executemany("INSERT OR REPLACE INTO checkpoints (name, state) VALUES (?,?)", ckpt_rows)
                if doc_rows:
                    conn.executemany("INSERT OR REPLACE INTO docs (kind, id, version, body) VALUES (?,?,?,?)", doc_rows)
                if kv:
                    conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?,?)", list(kv.items()))
        return stored

    @contextlib.contextmanager
    def _transaction(self, failure: str) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT): all of it or, on any error, none of it.

        A SQLite error becomes a LedgerError naming the file and saying what did not happen (`failure`).
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite has already rolled back after e.g. SQLITE_FULL
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise LedgerError(f"{self.path}: {failure} ({e})") from e

    def _append_records(self, drafts: Sequence[Draft], head_seq: int, head_hash: str) -> list[Stored]:
        """Build, chain, sign and insert a batch inside the caller's transaction; returns the stored records."""
        rows, stored = self._build(drafts, head_seq, head_hash)
        self._conn.executemany(INSERT_SQL, rows)
        return stored

    def _build(
        self, drafts: Sequence[Draft], head_seq: int, head_hash: str
    ) -> tuple[list[tuple[Any, ...]], list[Stored]]:
        """Events, hashes and signatures for a batch, as insert rows and `Stored` values.

        Two passes: `_prepare` builds and chains every event (the chain needs only hashes, never signatures), then
        each record is signed over the digest already computed for its hash and its body assembled around the
        signature. The signature is the largest cost by far (one ECDSA P-256 sign per record, ~20 us); the rest is
        one C JSON encode of `data`, a few string joins and one sha256 per record."""
        key = self._key
        assert key is not None
        prepared = self._prepare(drafts, head_seq, head_hash)
        sign = key.sign
        b64 = binascii.b2a_base64
        return _assemble(
            prepared, [b64(sign(p[2], _PREHASHED_ECDSA), newline=False).decode("ascii") for p in prepared], self.epoch
        )

    def _prepare(self, drafts: Sequence[Draft], head_seq: int, head_hash: str) -> list[_Prepared]:
        return list(self._prepare_iter(drafts, head_seq, head_hash))

    def _prepare_iter(self, drafts: Sequence[Draft], head_seq: int, head_hash: str) -> Iterator[_Prepared]:
        """Validate, number, build and chain a batch: per record its row (without body), the canonical text around
        the place of `sig`, and the sha256 digest of the unsigned canonical bytes (whose hex is the record's hash)."""
        epoch = self.epoch
        source_js = _js(self._source)
        default_subject_js = _js(self.gateway_subject)
        id_prefix = self._id_prefix
        encode = _encode_data
        sha256 = hashlib.sha256
        stored_spans = self._stored_cycle_spans(drafts)
        prev = head_hash
        seq = head_seq
        cycle_seqs: dict[str, list[int]] = {}  # cycle id -> [min, max] seq of its partition records in this batch
        for i, d in enumerate(drafts):
            seq += 1
            data = dict(d.data)
            if d.cycle_id and "cycle_id" not in data:
                data["cycle_id"] = d.cycle_id
            kind, app, fn, cid, energy, dur, uses, cost, cur = _columns(data)
            if cid:
                if kind in _PARTITION:
                    span = cycle_seqs.get(cid)
                    if span is None:
                        cycle_seqs[cid] = [seq, seq]
                    else:
                        span[1] = seq
                elif kind == _CYCLE:
                    first, last = stored_spans.get(cid, (0, 0))
                    in_batch = cycle_seqs.get(cid)
                    if in_batch:
                        first = min(first, in_batch[0]) if first else in_batch[0]
                        last = max(last, in_batch[1])
                    if first:
                        data["first_seq"] = first
                        data["last_seq"] = last
            data.pop("epoch", None)
            data.pop("seq", None)
            _check_data(data, i)
            typ = d.type
            t = d.time
            if type(typ) is not str or not typ:
                raise LedgerError(f"draft {i}: type must be a non-empty string")
            if not isinstance(t, int | float) or not (0 <= t < 253402300800):
                raise LedgerError(f"draft {i} ({typ}): time {t!r} is not a wall time in seconds")
            ts = d.time_status
            if ts not in _TIME_STATUS:
                raise LedgerError(f"draft {i} ({typ}): time status {ts!r}; allowed: S, U")
            t_ms = round(t * 1000)
            data["epoch"] = epoch
            data["seq"] = seq
            rid = f"{id_prefix}{seq}"
            subject = d.subject
            head = (
                f'{{"data":{encode(data)},"datacontenttype":"application/json","id":"{rid}",'
                f'"prevhash":"{prev}","sequence":"{seq:020d}"'
            )
            tail = (
                f',"source":{source_js},"specversion":"1.0","subject":'
                f"{_js(subject) if subject else default_subject_js},"
                f'"time":"{_rfc3339_ms(t_ms)}","timestatus":"{ts}","type":{_js(typ)}}}'
            )
            digest = sha256((head + tail).encode()).digest()
            h = digest.hex()
            yield (seq, rid, typ, kind, app, fn, cid, t_ms, energy, dur, uses, cost, cur, h), head, digest, tail
            prev = h

    def _stored_cycle_spans(self, drafts: Sequence[Draft]) -> dict[str, tuple[int, int]]:
        """(min, max) seq of the partition records already stored, for each cycle that a cycle draft of the batch
        names: one query per batch instead of one per cycle record."""
        wanted: set[str] = set()
        for d in drafts:
            data = d.data
            if data.get("kind") == _CYCLE:
                cid = data.get("cycle_id", d.cycle_id)
                if type(cid) is str and cid:
                    wanted.add(cid)
        spans: dict[str, tuple[int, int]] = {}
        ids = sorted(wanted)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = self._conn.execute(
                f"SELECT cycle_id, min(seq), max(seq) FROM records WHERE cycle_id IN ({','.join('?' * len(chunk))}) "
                "AND cycle_id!='' AND kind IN (?,?,?) GROUP BY cycle_id",
                (*chunk, *_PARTITION),
            ).fetchall()
            for cid, lo, hi in rows:
                spans[cid] = (lo, hi)
        return spans

    # ---------------------------------------------------------------------------------------------- reading

    def head(self) -> tuple[int, str]:
        """(last seq, its hash); (0, 64 zeros) for an empty ledger."""
        with self._mutex:
            self._check_open()
            return self._head_in_tx()

    def _head_in_tx(self) -> tuple[int, str]:
        rows = dict(
            self._conn.execute("SELECT key, value FROM kv WHERE key IN (?,?)", (_K_HEAD_SEQ, _K_HEAD_HASH)).fetchall()
        )
        return int(rows[_K_HEAD_SEQ]), str(rows[_K_HEAD_HASH])

    def acked_through(self) -> int:
        return int(self._kv_required(_K_ACKED))

    def get(self, seq: int) -> Stored | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute(
                "SELECT seq, id, type, kind, hash, body FROM records WHERE seq=?", (seq,)
            ).fetchone()
            acked = self.acked_through()
        return None if row is None else self._stored(row, acked)

    def iter_records(self, from_seq: int = 1, to_seq: int | None = None, *, chunk: int = 500) -> Iterator[Stored]:
        """Records in seq order, fetched in chunks (safe to interleave with appends)."""
        nxt = from_seq
        while True:
            with self._mutex:
                self._check_open()
                hi = to_seq if to_seq is not None else MAX_SAFE_INT
                rows = self._conn.execute(
                    "SELECT seq, id, type, kind, hash, body FROM records WHERE seq>=? AND seq<=? ORDER BY seq LIMIT ?",
                    (nxt, hi, chunk),
                ).fetchall()
                acked = self.acked_through()
            if not rows:
                return
            for row in rows:
                yield self._stored(row, acked)
            nxt = rows[-1][0] + 1

    def unacked(self, after_seq: int = 0, limit: int = 100) -> list[Stored]:
        """The next unacked records after `after_seq`, in seq order: what the sync (re)sends, byte-identical."""
        with self._mutex:
            self._check_open()
            acked = self.acked_through()
            rows = self._conn.execute(
                "SELECT seq, id, type, kind, hash, body FROM records WHERE seq>? ORDER BY seq LIMIT ?",
                (max(after_seq, acked), limit),
            ).fetchall()
        return [self._stored(r, acked) for r in rows]

    def unacked_count(self) -> int:
        with self._mutex:
            self._check_open()
            return self._head_in_tx()[0] - self.acked_through()

    def _stored(self, row: tuple[Any, ...], acked_through: int) -> Stored:
        seq, rid, typ, kind, h, body = row
        return Stored(seq, rid, self.epoch, typ, kind, h, bytes(body), seq <= acked_through)

    # ---------------------------------------------------------------------------------------------- acks

    def mark_acked(self, epoch: int, through: int, head_hash: str) -> AckOutcome:
        """Honour a cumulative ack from the cloud, only when it names a record we hold with the hash we hold."""
        with self._mutex:
            self._check_open()
            if epoch != self.epoch:
                return AckOutcome.WRONG_EPOCH
            with self._transaction("cannot record the ack"):
                outcome = self._ack_in_tx(through, head_hash)
            return outcome

    def _ack_in_tx(self, through: int, head_hash: str) -> AckOutcome:
        head_seq, _ = self._head_in_tx()
        acked = self.acked_through()
        if through > head_seq:
            return AckOutcome.BEYOND_HEAD
        row = self._conn.execute("SELECT hash FROM records WHERE seq=?", (through,)).fetchone()
        if row is not None and row[0] != head_hash:
            return AckOutcome.MISMATCH
        if through <= acked:
            return AckOutcome.ALREADY
        if row is None:  # cannot happen for seq in (acked, head] unless the database was altered
            return AckOutcome.MISMATCH
        self._conn.execute("UPDATE kv SET value=? WHERE key=?", (str(through), _K_ACKED))
        return AckOutcome.ADVANCED

    # ------------------------------------------------------------------------------------ checkpoints, docs, kv

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute("SELECT state FROM checkpoints WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row[0])
        return state

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        with self._mutex:
            self._check_open()
            rows = self._conn.execute("SELECT name, state FROM checkpoints ORDER BY name").fetchall()
        return {name: json.loads(state) for name, state in rows}

    def put_doc(self, kind: str, id: str, version: int, body: Mapping[str, Any]) -> None:
        """Store (replace) a document. Version rules (reject stale) belong to the caller that knows the command."""
        row = _doc_row(Doc(kind, id, version, dict(body)))
        self._write("INSERT OR REPLACE INTO docs (kind, id, version, body) VALUES (?,?,?,?)", row)

    def doc(self, kind: str, id: str) -> Doc | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute(
                "SELECT kind, id, version, body FROM docs WHERE kind=? AND id=?", (kind, id)
            ).fetchone()
        return None if row is None else Doc(row[0], row[1], row[2], json.loads(row[3]))

    def docs(self, kind: str) -> list[Doc]:
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(
                "SELECT kind, id, version, body FROM docs WHERE kind=? ORDER BY id", (kind,)
            ).fetchall()
        return [Doc(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def kv_get(self, key: str, default: str | None = None) -> str | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def kv_set(self, key: str, value: str) -> None:
        """Set a setting (e.g. `last_dseq`). Keys the ledger owns (epoch, head, acked_through, ...) are refused."""
        self._check_kv_keys({key: value})
        self._write("INSERT OR REPLACE INTO kv (key, value) VALUES (?,?)", (key, value))

    def _check_kv_keys(self, kv: Mapping[str, str]) -> None:
        for k, v in kv.items():
            if k in RESERVED_KV:
                raise LedgerError(f"{self.path}: kv key {k!r} belongs to the ledger and cannot be set")
            if not isinstance(v, str):
                raise LedgerError(f"{self.path}: kv {k!r}: value must be a string, not {type(v).__name__}")

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._mutex:
            self._check_open()
            try:
                self._conn.execute(sql, params)  # autocommit: its own durable transaction
            except sqlite3.Error as e:
                raise LedgerError(f"{self.path}: write failed ({e})") from e

    def _kv_required(self, key: str) -> str:
        with self._mutex:
            self._check_open()
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: kv {key!r} is missing; the ledger is damaged")
        return str(row[0])

    # ---------------------------------------------------------------------------------------------- usage

    def usage_summary(
        self,
        appliance: str | None = None,
        since_wall: float | None = None,
        by: Literal["function", "day", "cycle"] = "function",
        tz: tzinfo | None = None,
    ) -> list[UsageRow]:
        """Usage grouped per appliance and function, local day (`tz`, default UTC) or cycle, from usage records.

        Energy and time sum the partition kinds (function, interim, gap) only, uses come from cycle records, and cost
        sums every usage record per currency: a cycle record restates its segments' energy but not their cost.
        """
        if by not in ("function", "day", "cycle"):
            raise LedgerError(f"usage: by={by!r}; allowed: function, day, cycle")
        sql = (
            "SELECT appliance, function, cycle_id, t_end_ms, kind, energy_mwh, duration_ms, uses, cost_minor, currency "
            "FROM records WHERE type=?"
        )
        params: list[Any] = [USAGE_TYPE]
        if appliance is not None:
            sql += " AND appliance=?"
            params.append(appliance)
        if since_wall is not None:
            sql += " AND t_end_ms>=?"
            params.append(round(since_wall * 1000))
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        zone = tz or UTC
        groups: dict[tuple[str, str], list[Any]] = {}
        for app, fn, cyc, t_ms, kind, e, dur, uses, cost, cur in rows:
            if by == "function":
                key = fn
            elif by == "cycle":
                key = cyc
            else:
                key = datetime.fromtimestamp(t_ms / 1000, tz=zone).strftime("%Y-%m-%d")
            g = groups.setdefault((app, key), [0, 0, 0, {}, 0])
            if kind in _PARTITION:
                g[0] += e
                g[1] += dur
            elif kind == _CYCLE:
                g[2] += uses
            if cur:
                g[3][cur] = g[3].get(cur, 0) + cost
            g[4] += 1
        return [
            UsageRow(app, key, g[0], g[1], g[2], tuple(sorted(g[3].items())), g[4])
            for (app, key), g in sorted(groups.items())
        ]

    # ---------------------------------------------------------------------------------------------- verify

    def verify(self, public_key: PublicKey) -> VerifyReport:
        """Walk every stored record: body parses and is canonical, ids and seqs are contiguous and consistent,
        prevhash links, the stored hash and every query column match the body, the signature verifies."""
        with self._mutex:
            self._check_open()
            try:
                return self._verify(public_key)
            except sqlite3.DatabaseError as e:
                return VerifyReport(False, 0, None, f"the database file is damaged ({e})")

    def _verify(self, public_key: PublicKey) -> VerifyReport:
        conn = self._conn
        kv = dict(conn.execute("SELECT key, value FROM kv").fetchall())
        try:
            anchor_seq = int(kv[_K_ANCHOR_SEQ])
            prev = str(kv[_K_ANCHOR_PREV])
            head_seq = int(kv[_K_HEAD_SEQ])
            head_hash = str(kv[_K_HEAD_HASH])
            acked = int(kv[_K_ACKED])
        except (KeyError, ValueError) as e:
            return VerifyReport(False, 0, None, f"ledger settings are damaged ({e})")
        epoch = self.epoch
        source = self._source
        expected = anchor_seq
        checked = 0

        def bad(seq: int, reason: str) -> VerifyReport:
            return VerifyReport(False, checked, seq, reason, anchor_seq, expected - 1)

        cur = conn.execute(f"SELECT {_RECORD_COLS} FROM records ORDER BY seq")
        while True:
            batch = cur.fetchmany(500)
            if not batch:
                break
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
            return VerifyReport(
                False, checked, None, f"acked_through {acked} is beyond the head {head_seq}", anchor_seq, last
            )
        return VerifyReport(True, checked, None, "ok", anchor_seq if checked else 0, last)

    # ---------------------------------------------------------------------------------------------- maintenance

    def prune(self, retain_days: float, now_wall: float) -> int:
        """Delete acked records that ended more than `retain_days` before `now_wall`, oldest first, as a prefix.

        Never an unacked record and never the chain head. The first kept record's prevhash becomes the anchor
        `verify` starts from. Returns the number of records deleted."""
        cutoff_ms = round((now_wall - retain_days * 86400) * 1000)
        with self._mutex:
            self._check_open()
            conn = self._conn
            deleted = 0
            with self._transaction("prune failed, nothing was deleted"):
                head_seq, _ = self._head_in_tx()
                limit = min(self.acked_through(), head_seq - 1)
                anchor = int(self._kv_required(_K_ANCHOR_SEQ))
                # The prefix ends before the first record in range that is still within retention.
                row = conn.execute(
                    "SELECT min(seq) FROM records WHERE seq>=? AND seq<=? AND t_end_ms>=?",
                    (anchor, limit, cutoff_ms),
                ).fetchone()
                last = (row[0] - 1) if row[0] is not None else limit
                if last >= anchor:
                    h = conn.execute("SELECT hash FROM records WHERE seq=?", (last,)).fetchone()
                    if h is None:
                        raise LedgerError(f"{self.path}: seq {last} is missing; run `koto verify`")
                    deleted = conn.execute("DELETE FROM records WHERE seq<=?", (last,)).rowcount
                    conn.executemany(
                        "UPDATE kv SET value=? WHERE key=?",
                        ((str(last + 1), _K_ANCHOR_SEQ), (str(h[0]), _K_ANCHOR_PREV)),
                    )
        return int(deleted)

    def anchor(self) -> tuple[int, str]:
        """(first kept seq, its prevhash): where the local chain starts after pruning; (1, zeros) before."""
        return int(self._kv_required(_K_ANCHOR_SEQ)), self._kv_required(_K_ANCHOR_PREV)

    def wal_checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it (call when idle so the WAL does not grow)."""
        with self._mutex:
            self._check_open()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                raise LedgerError(f"{self.path}: WAL checkpoint failed ({e})") from e

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{self.path}: the ledger is closed")


# --------------------------------------------------------------------------------------------------------------


def _doc_row(d: Doc) -> tuple[str, str, int, str]:
    if not d.kind or not d.id or type(d.version) is not int:
        raise LedgerError(f"document {d.kind!r}/{d.id!r}: kind, id and an integer version are required")
    return (d.kind, d.id, d.version, json.dumps(d.body, sort_keys=True, separators=(",", ":")))


def _check_record(row: tuple[Any, ...], epoch: int, source: str, prev: str, public_key: PublicKey) -> tuple[str, str]:
    """Every check on one stored row; returns (reason, hash), reason empty when the record is sound."""
    seq, rid, typ, kind, app, fn, cyc, t_ms, e, dur, uses, cost, cur, h, body = row
    if not isinstance(body, bytes):
        return "body is not stored as bytes", ""
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as ex:
        return f"body does not parse ({ex})", ""
    if not isinstance(event, dict):
        return "body is not a JSON object", ""
    try:
        if canonical_bytes(event) != body:
            return "body is not in canonical form", ""
    except CanonicalError as ex:
        return f"body has no canonical form ({ex})", ""
    sig = event.pop("sig", None)
    if not isinstance(sig, str) or not _canonical_b64(sig):
        return "signature is missing or not canonical base64", ""
    data = event.get("data")
    if not isinstance(data, dict):
        return "data is missing", ""
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
            return what, ""
    if event.get("prevhash") != prev:
        return "prevhash does not link to the previous record", ""
    unsigned = canonical_bytes(event)
    digest = sha256_hex(unsigned)
    if digest != h:
        return "stored hash does not match the record", ""
    try:
        t_ok = _ms_of(str(event.get("time"))) == t_ms
    except ValueError:
        t_ok = False
    if not t_ok:
        return "time column does not match the record", ""
    if typ != event.get("type") or (kind, app, fn, cyc, e, dur, uses, cost, cur) != _columns(data):
        return "query columns do not match the record", ""
    if not verify_bytes(public_key, unsigned, sig):
        return "signature does not verify", ""
    return "", digest


def _take_writer_lock(p: Path) -> int:
    lock_path = p.with_name(p.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise LedgerError(f"{p}: another process is writing this ledger (lock {lock_path} is held)") from e
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _init_db(
    conn: sqlite3.Connection, p: Path, gateway_id: str, subject: str | None, epoch: int | None, *, create: bool
) -> tuple[str, str, int]:
    """Create the schema and identity on first open; on later opens check the database is this gateway's."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_kv = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='kv'").fetchone()
            kv: dict[str, str] = dict(conn.execute("SELECT key, value FROM kv").fetchall()) if has_kv else {}
            if _K_GATEWAY not in kv:
                if not create:
                    raise LedgerError(f"{p}: not a Koto ledger (no gateway id); open it with the device key first")
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] and not has_kv:
                    raise LedgerError(f"{p}: this database holds other tables; it is not a Koto ledger")
                ep = epoch if epoch is not None else int(time.time())
                if type(ep) is not int or not (0 < ep <= MAX_SAFE_INT):
                    raise LedgerError(f"{p}: epoch {ep!r} must be a positive integer")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                kv = {
                    _K_SCHEMA: str(SCHEMA_VERSION),
                    _K_GATEWAY: gateway_id,
                    _K_SUBJECT: subject or f"urn:koto:gw:{gateway_id}",
                    _K_EPOCH: str(ep),
                    _K_HEAD_SEQ: "0",
                    _K_HEAD_HASH: ZERO_HASH,
                    _K_ACKED: "0",
                    _K_ANCHOR_SEQ: "1",
                    _K_ANCHOR_PREV: ZERO_HASH,
                }
                conn.executemany("INSERT INTO kv (key, value) VALUES (?,?)", list(kv.items()))
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            else:
                if kv[_K_GATEWAY] != gateway_id:
                    raise LedgerError(
                        f"{p}: this ledger belongs to gateway {kv[_K_GATEWAY]!r}, not {gateway_id!r}; "
                        "use that gateway's state directory or a new one"
                    )
                if int(kv.get(_K_SCHEMA, "0")) != SCHEMA_VERSION:
                    raise LedgerError(
                        f"{p}: ledger schema version {kv.get(_K_SCHEMA)!r}; this Koto reads {SCHEMA_VERSION}"
                    )
                if epoch is not None and int(kv[_K_EPOCH]) != epoch:
                    raise LedgerError(f"{p}: the ledger's epoch is {kv[_K_EPOCH]}, not {epoch}")
                if subject and create and subject != kv[_K_SUBJECT]:
                    conn.execute("UPDATE kv SET value=? WHERE key=?", (subject, _K_SUBJECT))
                    kv[_K_SUBJECT] = subject
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"{p}: cannot use this file as a ledger ({e})") from e
    return kv[_K_GATEWAY], kv[_K_SUBJECT], int(kv[_K_EPOCH])
