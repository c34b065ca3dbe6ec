"""The ledger's SQLite file: connection and pragmas, the writer lock, the schema and its version, transactions, and
the kv keys the ledger owns.

Everything that knows how the ledger sits on disk is here, so a schema change (and the migration that goes with it)
is one module's business: `init_db` creates a new database or checks an existing one is this gateway's and at
`SCHEMA_VERSION`, which is where a future migration from an older version plugs in. Functions take the connection
and run inside the caller's lock (the `Ledger` facade's mutex); none of them takes a lock of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from koto.canonical import MAX_SAFE_INT, ZERO_HASH

from ..errors import LedgerError
from ..records import PARTITION_KINDS
from .lease import locked_message, reader_lease

SCHEMA_VERSION = 2

# Keys of the kv table that the ledger owns; `kv_set` refuses them so nothing outside can move the chain or cursor.
K_GATEWAY = "gateway_id"
K_SUBJECT = "gateway_subject"
K_EPOCH = "epoch"
K_HEAD_SEQ = "head_seq"
K_HEAD_HASH = "head_hash"
K_ACKED = "acked_through"
K_ANCHOR_SEQ = "anchor_seq"
K_ANCHOR_PREV = "anchor_prevhash"
K_SCHEMA = "schema_version"
K_PRUNED = "pruned_totals"  # a local-only gateway's totals of the records it pruned (retention.py)
RESERVED_KV = frozenset(
    {K_GATEWAY, K_SUBJECT, K_EPOCH, K_HEAD_SEQ, K_HEAD_HASH, K_ACKED, K_ANCHOR_SEQ, K_ANCHOR_PREV, K_SCHEMA, K_PRUNED}
)

PARTITION = tuple(str(k) for k in PARTITION_KINDS)
# The rows of the `records_cycles` index, as a query must say it for SQLite to use that partial index.
CYCLE_ROWS = "cycle_id != ''"

# The schema. `records` columns beside `body` and `hash` are copies of fields inside `body`, kept for queries and
# checked by `verify`. Times as integer milliseconds so the copy is exact. `id` is `{epoch}-{seq}` with one epoch per
# ledger, so the seq key makes it unique and `verify` checks it is exactly that: a new ledger has no UNIQUE index on
# it (one leaf page less per commit on the SD card, ~30 MB less at a million records); a ledger made before
# 2026-12-05 keeps its `sqlite_autoindex_records_1`, which changes nothing else.
# Schema 2 (2026-12-06) adds `entitled` (the record's `data.entitled`, "" when absent) and makes the cycle index
# covering, so `koto usage --by cycle` sums each use from that index alone and never reads the 1.4 GB of bodies
# (billing.py). A version 1 ledger is migrated in place by its first writer open (`_migrate_v1`); read only, it is
# read as it is, from the table.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
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
    entitled    TEXT    NOT NULL DEFAULT '',
    hash        TEXT    NOT NULL,
    body        BLOB    NOT NULL
);
-- Every column `koto usage --by cycle` reads, for the records that name a cycle (billing.py), in (cycle, appliance)
-- order, so that each use is one run of the index. `cycle_spans` finds a cycle's stored partition records in it too.
-- `type` is a column, not a term of the partial index's WHERE: SQLite 3.40 (Debian 12, Raspberry Pi OS) would read
-- the table row of every entry to check a WHERE-only column, 1.2 s instead of 0.1 s on a million records.
CREATE INDEX IF NOT EXISTS records_cycles ON records(
    cycle_id, appliance, kind, t_end_ms, duration_ms, energy_mwh, uses, currency, cost_minor, entitled, type)
    WHERE cycle_id != '';
-- `koto usage` reads only this index, never the table with its bodies (usage.py): on a ledger of a million records
-- the table is 1.4 GB, the index about a tenth. Made on the first writer open of a ledger made before it.
CREATE INDEX IF NOT EXISTS records_usage ON records(
    type, appliance, kind, function, currency, t_end_ms, energy_mwh, duration_ms, uses, cost_minor);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (through INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
"""

RECORD_COLS = (
    "seq, id, type, kind, appliance, function, cycle_id, t_end_ms, energy_mwh, duration_ms, uses, cost_minor, "
    "currency, entitled, hash, body"
)
# A version 1 ledger read as it is has no `entitled` column: NULL in its place (`verify` then does not compare it).
RECORD_COLS_V1 = RECORD_COLS.replace("entitled,", "NULL,")
INSERT_SQL = f"INSERT INTO records ({RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
# The WAL's limits, set deliberately: on an SD card every page SQLite writes is a flash page program inside an erase
# block the card may have to copy, so the ledger writes as few bytes as it can and always in the same places.
# - page_size 1024 for a NEW ledger: a commit dirties about eight pages (the records' last leaf, three index leaves,
#   the chain head in kv, the checkpoints, page 1 when the file grows) whatever their size, and each goes to the WAL
#   whole: at 4096 bytes a commit of one or two ~900-byte records wrote ~30 KB of frames, at 1024 a quarter of that
#   (bench/sd_writes.py, docs/ledger.md "Write budget"). A record's body then lies on an overflow page of its own,
#   which verify and the sync read anyway; `koto usage` reads only the records_usage index. An existing ledger keeps
#   the page size it was made with: in WAL mode SQLite ignores a page_size change (only VACUUM outside WAL could).
# - synchronous=FULL: a commit is on the card before the sync sends its records. NORMAL would let a power cut take
#   back a commit the cloud may already hold, and the next record would then fork the chain under the same seq.
# - wal_autocheckpoint = 4 MiB of pages (4096 at 1 KiB, 1000 at 4 KiB): the hot pages (the chain head, the
#   checkpoints, the records' last leaves) are rewritten in the WAL by every commit but copied into the database
#   only once per autocheckpoint, not once per commit; at the daemon's budget that is every few days.
# - journal_size_limit = that + 1 page: after a checkpoint the WAL file is reused in place from its start (no
#   truncate and regrow, no filesystem metadata writes per cycle); only a WAL that grew past that (a long prune, a
#   reader holding a snapshot) is cut back, so the file never stays large. `retention` truncates it after pruning.
# - cache_size = 512 KiB per connection (SQLite's default is 2,000 KiB): the daemon's connection is open for months
#   and its page cache fills to the cap as the ledger grows (the soak saw SQLite's heap reach 2.2 MB at six
#   simulated hours and stay there); what it reads again and again (the newest leaves, the chain head, kv, the
#   checkpoints, the top of the indexes) fits in a quarter of that, and a page that is not cached is one read from
#   the kernel's page cache (docs/performance.md has the figures).
PAGE_SIZE = 1024  # for new ledgers; read the page size of an open one with `PRAGMA page_size`
CACHE_KIB = 512
WAL_BYTES = 4 * 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = WAL_BYTES // PAGE_SIZE  # at the new ledgers' page size
# How long a connection waits for a lock another one holds: a reader for the daemon to lend it its ledger (see
# `lease`), the daemon for a reader's snapshot at a checkpoint. Set at connect, so it covers the pragmas that first
# read the file (journal_mode), not only the statements after them.
BUSY_MS = 10_000
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
)


def wal_limits(page_size: int) -> tuple[int, int]:
    """(wal_autocheckpoint in pages, journal_size_limit in bytes) for a ledger of `page_size`: the same 4 MiB WAL."""
    pages = WAL_BYTES // page_size
    return pages, (pages + 1) * page_size


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a ledger database belongs to, as stored in it."""

    gateway_id: str
    gateway_subject: str
    epoch: int


def connect(path: Path | str, *, exclusive: bool = False, open_busy_ms: int | None = None) -> sqlite3.Connection:
    """A connection with the ledger's pragmas (also used by the benchmark's raw-SQLite baseline).

    `exclusive` (the daemon's own connection, never a reader's): `locking_mode=EXCLUSIVE` before anything reads the
    file, so SQLite keeps the WAL index in this process's heap and never creates or writes `ledger.db-shm` (a shared
    mapping whose dirty pages the kernel writes back to the SD card: ~43 % of the bytes of a commit). The file is then
    locked from the first read until the connection closes: no other connection, in any process, reads it; readers
    borrow it through the lease (`lease`, `Ledger.serve_readers`). `open_busy_ms` is how long opening waits for
    someone else's lock (the daemon's reclaim tries briefly); the connection then waits `BUSY_MS` like any other.
    A SQLite error (the file locked: `is_busy`) is raised as it is, and nothing stays open."""
    busy_ms = BUSY_MS if open_busy_ms is None else open_busy_ms
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
    try:
        if exclusive:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # first: the pragmas below read the file
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL is on: a new file takes it, an existing one not
        for pragma in _PRAGMAS:  # journal_mode=WAL reads the file: with `exclusive`, the lock is taken here
            conn.execute(pragma)
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")  # BUSY_MS read now, not at import: a test may shorten it
    except BaseException:
        conn.close()
        raise
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # negative: KiB, whatever the page size
    pages, limit = wal_limits(int(conn.execute("PRAGMA page_size").fetchone()[0]))
    conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
    conn.execute(f"PRAGMA journal_size_limit={limit}")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables and index, in the caller's transaction (also used by the benchmark's raw-SQLite baseline)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def open_db(
    p: Path, gateway_id: str, subject: str | None, epoch: int | None, *, writer: bool, exclusive: bool = False,
    open_busy_ms: int | None = None,
) -> tuple[sqlite3.Connection, int | None, Identity]:
    """Connect to the ledger at `p` and check (a writer: create) it; returns the connection, the writer lock's file
    descriptor (None for a reader) and the stored identity. On any failure nothing stays open or locked; a file
    locked by another connection raises a LedgerError whose `__cause__` is the SQLite error (`is_busy`).
    `exclusive` and `open_busy_ms` as in `connect` (a writer only)."""
    lock_fd: int | None = None
    if writer:
        p.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = take_writer_lock(p)
    try:
        conn = connect(p, exclusive=exclusive and writer, open_busy_ms=open_busy_ms)
    except sqlite3.Error as e:
        release_lock(lock_fd)
        raise LedgerError(f"{p}: cannot open the ledger database ({e})") from e
    try:
        identity = init_db(conn, p, gateway_id, subject, epoch, create=writer)
    except BaseException:
        conn.close()
        release_lock(lock_fd)
        raise
    return conn, lock_fd, identity


def is_busy(e: BaseException | None) -> bool:
    """Whether `e` is SQLite's "database is locked": another connection holds the file (the daemon, exclusively)."""
    return isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def take_writer_lock(p: Path) -> int:
    """An advisory lock on `<db>.lock`: one writing process per ledger; readers take none."""
    lock_path = p.with_name(p.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise LedgerError(f"{p}: another process is writing this ledger (lock {lock_path} is held)") from e
    return fd


def release_lock(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def init_db(
    conn: sqlite3.Connection, p: Path, gateway_id: str, subject: str | None, epoch: int | None, *, create: bool
) -> Identity:
    """Create the schema and identity on first open; on later opens check the database is this gateway's."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_kv = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='kv'").fetchone()
            kv: dict[str, str] = dict(conn.execute("SELECT key, value FROM kv").fetchall()) if has_kv else {}
            if K_GATEWAY not in kv:
                if not create:
                    raise LedgerError(f"{p}: not a Koto ledger (no gateway id); open it with the device key first")
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] and not has_kv:
                    raise LedgerError(f"{p}: this database holds other tables; it is not a Koto ledger")
                kv = _create(conn, p, gateway_id, subject, epoch)
            else:
                _check_identity(conn, p, kv, gateway_id, subject, epoch, create=create)
                if create and int(kv[K_SCHEMA]) == 1:
                    _migrate_v1(conn)
                if create:
                    create_schema(conn)  # tables and indexes added since the ledger was made (acks), empty until used
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"{p}: cannot use this file as a ledger ({e})") from e
    return Identity(kv[K_GATEWAY], kv[K_SUBJECT], int(kv[K_EPOCH]))


def _create(
    conn: sqlite3.Connection, p: Path, gateway_id: str, subject: str | None, epoch: int | None
) -> dict[str, str]:
    """A new ledger: the schema, its version, the identity and an empty chain (inside `init_db`'s transaction)."""
    ep = epoch if epoch is not None else int(time.time())
    if type(ep) is not int or not (0 < ep <= MAX_SAFE_INT):
        raise LedgerError(f"{p}: epoch {ep!r} must be a positive integer")
    create_schema(conn)
    kv = {
        K_SCHEMA: str(SCHEMA_VERSION),
        K_GATEWAY: gateway_id,
        K_SUBJECT: subject or f"urn:koto:gw:{gateway_id}",
        K_EPOCH: str(ep),
        K_HEAD_SEQ: "0",
        K_HEAD_HASH: ZERO_HASH,
        K_ACKED: "0",
        K_ANCHOR_SEQ: "1",
        K_ANCHOR_PREV: ZERO_HASH,
    }
    conn.executemany("INSERT INTO kv (key, value) VALUES (?,?)", list(kv.items()))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return kv


def _check_identity(
    conn: sqlite3.Connection,
    p: Path,
    kv: dict[str, str],
    gateway_id: str,
    subject: str | None,
    epoch: int | None,
    *,
    create: bool,
) -> None:
    """An existing ledger: this gateway's, at the schema version this code reads (a migration from an older version
    would run here), with the epoch asked for; a writer given a new subject stores it (updates `kv` in place)."""
    if kv[K_GATEWAY] != gateway_id:
        raise LedgerError(
            f"{p}: this ledger belongs to gateway {kv[K_GATEWAY]!r}, not {gateway_id!r}; "
            "use that gateway's state directory or a new one"
        )
    if kv.get(K_SCHEMA) not in READABLE_SCHEMAS:
        raise LedgerError(f"{p}: ledger schema version {kv.get(K_SCHEMA)!r}; this Koto reads {SCHEMA_VERSION}")
    if epoch is not None and int(kv[K_EPOCH]) != epoch:
        raise LedgerError(f"{p}: the ledger's epoch is {kv[K_EPOCH]}, not {epoch}")
    if subject and create and subject != kv[K_SUBJECT]:
        conn.execute("UPDATE kv SET value=? WHERE key=?", (subject, K_SUBJECT))
        kv[K_SUBJECT] = subject


READABLE_SCHEMAS = frozenset({"1", str(SCHEMA_VERSION)})  # 1: read as it is, or migrated by a writer
_ENTITLED_MARK = b'"entitled":'


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2, in place, in the caller's (`init_db`'s) transaction: the `entitled` column, filled from the
    bodies that have one, and the covering cycle index instead of the narrow one (`create_schema` makes it next).

    Adding the column rewrites nothing (SQLite keeps the default for rows written before it); only the records whose
    body names an entitlement are rewritten, and their `entitled` is read by parsing the body as `verify` does. The
    bodies are scanned once (a minute or so for a million records on a Pi's SD card), a chunk of seqs at a time."""
    conn.execute("ALTER TABLE records ADD COLUMN entitled TEXT NOT NULL DEFAULT ''")
    lo, hi = conn.execute("SELECT min(seq), max(seq) FROM records").fetchone()
    for start in range(lo or 0, (hi or -1) + 1, 20_000):
        found = conn.execute("SELECT seq, body FROM records WHERE seq>=? AND seq<? AND instr(body, ?) > 0",
                             (start, start + 20_000, _ENTITLED_MARK)).fetchall()
        conn.executemany("UPDATE records SET entitled=? WHERE seq=?",
                         [(value, seq) for seq, body in found if (value := _entitled_of(body))])
    conn.execute("DROP INDEX IF EXISTS records_cycle")
    conn.execute("UPDATE kv SET value=? WHERE key=?", (str(SCHEMA_VERSION), K_SCHEMA))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _entitled_of(body: bytes | str) -> str:
    """A stored body's `data.entitled` as the column holds it (`envelope.columns`); "" for one that cannot be read,
    which `verify` reports on its own."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return ""
    value = data.get("entitled", "") if isinstance(data, dict) else ""
    return value if type(value) is str else ""


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the ledger has table `name` (a ledger made by an older Koto and only read since may lack `acks`)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: Path, failure: str) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT): all of it or, on any error, none of it.

    A SQLite error becomes a LedgerError naming the file and saying what did not happen (`failure`).
    """
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
        raise LedgerError(f"{path}: {failure} ({e})") from e


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(last seq, its hash) as the kv table holds them."""
    rows = dict(conn.execute("SELECT key, value FROM kv WHERE key IN (?,?)", (K_HEAD_SEQ, K_HEAD_HASH)).fetchall())
    return int(rows[K_HEAD_SEQ]), str(rows[K_HEAD_HASH])


def set_head(conn: sqlite3.Connection, seq: int, hash_hex: str) -> None:
    conn.executemany("UPDATE kv SET value=? WHERE key=?", ((str(seq), K_HEAD_SEQ), (hash_hex, K_HEAD_HASH)))


def acked_through(conn: sqlite3.Connection, path: Path) -> int:
    """The cloud's cumulative ack: every record with seq <= this is durable at the cloud."""
    return int(kv_required(conn, path, K_ACKED))


def kv_required(conn: sqlite3.Connection, path: Path, key: str) -> str:
    """A kv value the ledger cannot do without; its absence means the file was damaged."""
    row = conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
    if row is None:
        raise LedgerError(f"{path}: kv {key!r} is missing; the ledger is damaged")
    return str(row[0])


def cycle_spans(conn: sqlite3.Connection, cycle_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(min, max) seq of the partition records already stored for each of `cycle_ids`: one query per 500 ids."""
    spans: dict[str, tuple[int, int]] = {}
    ids = sorted(cycle_ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = conn.execute(
            f"SELECT cycle_id, min(seq), max(seq) FROM records WHERE cycle_id IN ({','.join('?' * len(chunk))}) "
            f"AND {CYCLE_ROWS} AND kind IN (?,?,?) GROUP BY cycle_id",
            (*chunk, *PARTITION),
        ).fetchall()
        for cid, lo, hi in rows:
            spans[cid] = (lo, hi)
    return spans


def read_gateway_id(path: Path | str) -> str:
    """The gateway id a ledger file belongs to (for tools that are handed a file), without opening it for writing."""
    p = Path(path)
    if not p.exists():
        raise LedgerError(f"{p}: no ledger at this path")
    with reader_lease(p) as lease:  # the daemon holds its ledger exclusively: ask it to lend it (`lease`)
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=BUSY_MS / 1000)
            try:
                row = conn.execute("SELECT value FROM kv WHERE key=?", (K_GATEWAY,)).fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            if is_busy(e):
                raise LedgerError(locked_message(p, lease, BUSY_MS / 1000)) from e
            raise LedgerError(f"{p}: not a Koto ledger ({e})") from e
    if row is None:
        raise LedgerError(f"{p}: not a Koto ledger (no gateway id)")
    return str(row[0])
