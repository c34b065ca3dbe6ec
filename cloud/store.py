"""The receiver's database: SQLite (WAL) by default, PostgreSQL (psycopg 3) given a `postgresql://` DSN.

One SQL dialect serves both (`?` placeholders are rewritten to `%s` for psycopg; `INSERT ... ON CONFLICT DO NOTHING`
exists in both). The rules that make several receivers on one database safe live here, not in the receiver:

- records are unique by (source, id) and inserted with ON CONFLICT DO NOTHING, so a resend is a no-op whichever
  receiver gets it; a *different* hash for an existing id is an alarm (stored in `alarms`, never in `records`);
- the acknowledgeable prefix is recomputed from the database inside the committing transaction, after taking the
  (gateway, epoch) chain row's write lock (SQLite: BEGIN IMMEDIATE locks the file; PostgreSQL: SELECT ... FOR
  UPDATE), so the last committer always sees every other receiver's committed rows and the prefix can only grow;
- the prefix advances from N to N+1 only when record N+1 is stored and its prevhash is the stored hash of N (64
  zeros for N = 1); a link that does not match stops the prefix there for good and raises an alarm: nothing is ever
  acknowledged over a gap or a break.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koto.canonical import ZERO_HASH

from .errors import NoDatabase, StoreError
from .store_commands import MIGRATED, UNKNOWN, CommandLog
from .store_commands import now as _now
from .verify import Event

log = logging.getLogger("koto.cloud.store")

# A command's row: `recorded_at` is when it was signed and its dseq taken, `sent_at` when the broker acknowledged the
# publish (NULL while it has not), `state` one of COMMAND_STATES, `problem` why it was not (or not surely) sent.
# Databases made before `state` existed are migrated when opened (`_migrate_commands`).
COMMANDS_COLUMNS = """
    gateway TEXT NOT NULL, dseq BIGINT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL,
    recorded_at TEXT, sent_at TEXT, state TEXT NOT NULL DEFAULT 'unknown', problem TEXT,
    PRIMARY KEY (gateway, dseq)"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY, pubkey_pem TEXT NOT NULL, registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    source TEXT NOT NULL, id TEXT NOT NULL, gateway TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    type TEXT NOT NULL, subject TEXT NOT NULL, time TEXT NOT NULL, hash TEXT NOT NULL, prevhash TEXT NOT NULL,
    body TEXT NOT NULL, received_at TEXT NOT NULL, forwarded INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, id));
CREATE INDEX IF NOT EXISTS records_chain ON records (gateway, epoch, seq);
CREATE INDEX IF NOT EXISTS records_forward ON records (forwarded, type);
CREATE TABLE IF NOT EXISTS chain (
    gateway TEXT NOT NULL, epoch BIGINT NOT NULL, contiguous_through BIGINT NOT NULL, head_hash TEXT NOT NULL,
    PRIMARY KEY (gateway, epoch));
CREATE TABLE IF NOT EXISTS alarms (
    gateway TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
    body TEXT NOT NULL, at TEXT NOT NULL, UNIQUE (gateway, epoch, seq, kind));
CREATE TABLE IF NOT EXISTS commands ({COMMANDS_COLUMNS});
CREATE TABLE IF NOT EXISTS replies (
    gateway TEXT NOT NULL, ack_of TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL, dseq TEXT NOT NULL,
    body TEXT NOT NULL, received_at TEXT NOT NULL, UNIQUE (gateway, ack_of, status, dseq));
CREATE TABLE IF NOT EXISTS births (
    gateway TEXT PRIMARY KEY, body TEXT NOT NULL, received_at TEXT NOT NULL);
"""

_WALK_CHUNK = 500



@dataclass(frozen=True, slots=True)
class Ack:
    gateway: str
    epoch: int
    acked_through: int
    head_hash: str

    def payload(self) -> bytes:
        return json.dumps(
            {"epoch": self.epoch, "acked_through": self.acked_through, "head_hash": self.head_hash},
            separators=(",", ":"), sort_keys=True,
        ).encode()


@dataclass(slots=True)
class CommitResult:
    inserted: list[Event] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[Event] = field(default_factory=list)  # same id, different hash: alarmed, not stored
    acks: list[Ack] = field(default_factory=list)  # current prefix of every (gateway, epoch) in the batch
    breaks: list[tuple[str, int, int]] = field(default_factory=list)  # (gateway, epoch, seq) whose link is wrong


class Store(CommandLog):
    """Common logic over a DB-API connection; subclasses supply the connection, placeholders and locking."""

    placeholder = "?"
    # Whether the receiver calls the store from a worker thread (True: calls wait on the network) or on its event
    # loop (False: see SqliteStore).
    threaded = True

    def __init__(self) -> None:
        self._conn: Any = None

    # -- dialect hooks ---------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _begin(self) -> None:
        raise NotImplementedError

    def _lock_chain(self, gateway: str, epoch: int) -> tuple[int, str]:
        raise NotImplementedError

    def _done(self) -> None:
        self._conn.commit()

    def _undo(self) -> None:
        self._conn.rollback()

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def is_outage(self, e: BaseException) -> bool:
        """Whether `e` means the database itself is unusable (a lost server, a disk error), not that one message
        was bad: the receiver stops on an outage instead of counting it as a refused message."""
        return isinstance(e, StoreError | OSError)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- gateways --------------------------------------------------------------------------------------------
    def register(self, gateway: str, pubkey_pem: str) -> None:
        """Register or re-key a gateway (the public PEM printed by `koto provision`)."""
        self._begin()
        try:
            self._x("INSERT INTO gateways (id, pubkey_pem, registered_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET pubkey_pem = excluded.pubkey_pem, "
                    "registered_at = excluded.registered_at", (gateway, pubkey_pem, _now()))
            self._done()
        except BaseException:
            self._undo()
            raise

    def pubkey(self, gateway: str) -> str | None:
        row = self._x("SELECT pubkey_pem FROM gateways WHERE id = ?", (gateway,)).fetchone()
        self._done()
        return None if row is None else str(row[0])

    def gateways(self) -> list[str]:
        rows = self._x("SELECT id FROM gateways ORDER BY id").fetchall()
        self._done()
        return [str(r[0]) for r in rows]

    # -- records ---------------------------------------------------------------------------------------------
    def commit(self, events: Sequence[Event]) -> CommitResult:
        """Store a batch in one transaction, then compute every touched (gateway, epoch)'s acknowledgeable prefix.

        The returned acks are durable when this returns: publish them only now, never before.
        """
        res = CommitResult()
        now = _now()
        self._begin()
        try:
            touched = {(ev.gateway, ev.epoch) for ev in events}
            if not self._insert_all(events, now):
                self._insert_each(events, now, res)
            else:
                res.inserted = list(events)
            for gateway, epoch in sorted(touched):
                ack, broken = self._advance(gateway, epoch, now)
                res.acks.append(ack)
                if broken is not None:
                    res.breaks.append((gateway, epoch, broken))
            self._done()
        except BaseException:
            self._undo()
            raise
        return res

    _INSERT = ("INSERT INTO records (source, id, gateway, epoch, seq, type, subject, time, hash, prevhash, body, "
               "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING")

    @staticmethod
    def _row(ev: Event, now: str) -> tuple[Any, ...]:
        return (ev.source, ev.id, ev.gateway, ev.epoch, ev.seq, ev.type, ev.subject, ev.time, ev.hash, ev.prevhash,
                ev.body.decode("utf-8"), now)

    def _insert_all(self, events: Sequence[Event], now: str) -> bool:
        """The common case in one executemany: every record new. False (and nothing inserted) when any is not.

        Inside a savepoint, so that when the count of inserted rows falls short (a resend, a conflict, the same id
        twice in the batch) the batch is undone and `_insert_each` tells duplicates from conflicts record by record.
        """
        if not events:
            return True
        if len({(ev.source, ev.id) for ev in events}) != len(events):
            return False
        self._x("SAVEPOINT batch")
        cur = self._conn.cursor()
        cur.executemany(self._sql(self._INSERT), [self._row(ev, now) for ev in events])
        if cur.rowcount == len(events):
            self._x("RELEASE SAVEPOINT batch")
            return True
        self._x("ROLLBACK TO SAVEPOINT batch")
        self._x("RELEASE SAVEPOINT batch")
        return False

    def _insert_each(self, events: Sequence[Event], now: str, res: CommitResult) -> None:
        for ev in events:
            cur = self._x(self._INSERT, self._row(ev, now))
            if cur.rowcount == 1:
                res.inserted.append(ev)
                continue
            row = self._x("SELECT hash FROM records WHERE source = ? AND id = ?", (ev.source, ev.id)).fetchone()
            if row is not None and row[0] == ev.hash:
                res.duplicates += 1
            else:
                res.conflicts.append(ev)
                self._alarm(ev.gateway, ev.epoch, ev.seq, "conflict",
                            f"a second, different record {ev.id} (hash {ev.hash[:12]}...)", ev.body, now)

    def _alarm(self, gateway: str, epoch: int, seq: int, kind: str, detail: str, body: bytes, now: str) -> None:
        self._x("INSERT INTO alarms (gateway, epoch, seq, kind, detail, body, at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (gateway, epoch, seq, kind) DO NOTHING",
                (gateway, epoch, seq, kind, detail, body.decode("utf-8", "replace"), now))

    def _advance(self, gateway: str, epoch: int, now: str) -> tuple[Ack, int | None]:
        """Walk the stored chain past the current prefix (inside the caller's transaction, with the row locked)."""
        through, head = self._lock_chain(gateway, epoch)
        start = through
        broken: int | None = None
        cur = self._x("SELECT seq, hash, prevhash FROM records WHERE gateway = ? AND epoch = ? AND seq > ? "
                      "ORDER BY seq", (gateway, epoch, through))
        done = False
        while not done:
            rows = cur.fetchmany(_WALK_CHUNK)
            if not rows:
                break
            for seq, h, prev in rows:
                if seq != through + 1:
                    done = True
                    break
                if prev != head:
                    broken = int(seq)
                    done = True
                    break
                through, head = int(seq), str(h)
        cur.close()
        if broken is not None:
            self._alarm(gateway, epoch, broken, "chain_break",
                        f"record {broken}'s prevhash is not the hash of stored record {broken - 1}", b"", now)
        if through > start:
            self._x("UPDATE chain SET contiguous_through = ?, head_hash = ? WHERE gateway = ? AND epoch = ?",
                    (through, head, gateway, epoch))
        return Ack(gateway, epoch, through, head), broken

    def ack_state(self, gateway: str, epoch: int) -> Ack:
        """The current acknowledgeable prefix, recomputed from the database (used on a birth)."""
        self._begin()
        try:
            ack, _ = self._advance(gateway, epoch, _now())
            self._done()
        except BaseException:
            self._undo()
            raise
        return ack

    def stored_seqs(self, gateway: str, epoch: int) -> list[int]:
        rows = self._x("SELECT seq FROM records WHERE gateway = ? AND epoch = ? ORDER BY seq", (gateway, epoch))
        out = [int(r[0]) for r in rows.fetchall()]
        self._done()
        return out

    def count(self, gateway: str | None = None) -> int:
        if gateway is None:
            row = self._x("SELECT COUNT(*) FROM records").fetchone()
        else:
            row = self._x("SELECT COUNT(*) FROM records WHERE gateway = ?", (gateway,)).fetchone()
        self._done()
        return int(row[0])

    def bodies(self, gateway: str) -> Iterator[bytes]:
        rows = self._x("SELECT body FROM records WHERE gateway = ? ORDER BY epoch, seq", (gateway,)).fetchall()
        self._done()
        for r in rows:
            yield str(r[0]).encode("utf-8")

    def alarms(self, gateway: str | None = None) -> list[tuple[str, int, int, str, str]]:
        sql = "SELECT gateway, epoch, seq, kind, detail FROM alarms"
        rows = (self._x(sql + " WHERE gateway = ? ORDER BY at", (gateway,)) if gateway
                else self._x(sql + " ORDER BY at")).fetchall()
        self._done()
        return [(str(a), int(b), int(c), str(d), str(e)) for a, b, c, d, e in rows]

    def usage_summary(self, gateway: str) -> dict[str, Any]:
        """Per subject and function: records, uses, energy (mWh) and duration (ms) of the partition kinds."""
        rows = self._x("SELECT type, subject, body FROM records WHERE gateway = ?", (gateway,)).fetchall()
        self._done()
        out: dict[str, Any] = {}
        for typ, subject, body in rows:
            if typ != "io.koto.usage.v1":
                continue
            data = json.loads(body).get("data", {})
            key = f"{subject} {data.get('function', '')}".strip()
            s = out.setdefault(key, {"records": 0, "uses": 0, "energy_mwh": 0, "duration_ms": 0})
            s["records"] += 1
            if data.get("kind") in ("function", "interim", "gap"):
                s["uses"] += int(data.get("uses", 0))
                s["energy_mwh"] += int(data.get("energy_mwh", 0))
                s["duration_ms"] += int(data.get("duration_ms", 0))
        return out

    # -- forwarding ------------------------------------------------------------------------------------------
    def unforwarded(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """(source, id, body) of committed usage records not yet forwarded to OpenMeter."""
        rows = self._x("SELECT source, id, body FROM records WHERE forwarded = 0 AND type = ? LIMIT ?",
                       ("io.koto.usage.v1", limit)).fetchall()
        self._done()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def mark_forwarded(self, keys: Sequence[tuple[str, str]]) -> None:
        self._begin()
        try:
            for source, id_ in keys:
                self._x("UPDATE records SET forwarded = 1 WHERE source = ? AND id = ?", (source, id_))
            self._done()
        except BaseException:
            self._undo()
            raise


class SqliteStore(Store):
    """SQLite in WAL mode with synchronous=FULL: a commit is on disk before the receiver acks it.

    BEGIN IMMEDIATE takes the write lock up front, which serialises committers across processes (two receivers on
    one file) and makes the prefix walk see every earlier commit.

    Called on the receiver's event loop, not in a worker thread: a commit of a hundred records takes about a
    millisecond here, but Python's sqlite3 releases the GIL around every row it steps, and in a worker thread each
    row then waited for the busy event loop to hand the GIL back: commits took eight times as long and the drain
    ran at 0.55x raw publish instead of 0.7-0.8x (docs/sync.md).
    """

    threaded = False

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """`create=False` refuses a path with no database (NoDatabase) instead of making an empty one there."""
        super().__init__()
        if not create and str(path) != ":memory:" and not Path(path).exists():
            raise NoDatabase(str(path))
        try:
            self._conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(SCHEMA)
            self._migrate_commands()
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the SQLite database ({e})") from e

    def _command_columns(self) -> set[str]:
        return {str(r[1]) for r in self._conn.execute("PRAGMA table_info(commands)").fetchall()}

    def _migrate_commands(self) -> None:
        """A `commands` table from before `state` (its `sent_at` NOT NULL and set before the publish was tried)
        becomes today's: SQLite cannot drop a NOT NULL, so the table is rebuilt in one transaction, the old
        `sent_at` kept as `recorded_at` and the state `unknown` (whether those commands reached the broker was
        never recorded). Checked again under the write lock: another process may have just done it."""
        if "state" in self._command_columns():
            return
        self._begin()
        try:
            if "state" not in self._command_columns():
                self._conn.execute(f"CREATE TABLE commands_migrating ({COMMANDS_COLUMNS})")
                self._conn.execute(
                    "INSERT INTO commands_migrating (gateway, dseq, id, type, body, recorded_at, state) "
                    f"SELECT gateway, dseq, id, type, body, sent_at, '{UNKNOWN}' FROM commands")
                self._conn.execute("DROP TABLE commands")
                self._conn.execute("ALTER TABLE commands_migrating RENAME TO commands")
                log.info("migrated the commands table: %s", MIGRATED)
            self._done()
        except BaseException:
            self._undo()
            raise

    # With isolation_level=None we manage transactions ourselves; commit/rollback only act inside one.
    def _done(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def _undo(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def is_outage(self, e: BaseException) -> bool:
        # OperationalError: locked, disk I/O, no such table; a bare DatabaseError: the file is not a database.
        return (super().is_outage(e) or isinstance(e, sqlite3.OperationalError | sqlite3.InterfaceError)
                or type(e) is sqlite3.DatabaseError)

    def _lock_chain(self, gateway: str, epoch: int) -> tuple[int, str]:
        self._x("INSERT INTO chain (gateway, epoch, contiguous_through, head_hash) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (gateway, epoch) DO NOTHING", (gateway, epoch, ZERO_HASH))
        row = self._x("SELECT contiguous_through, head_hash FROM chain WHERE gateway = ? AND epoch = ?",
                      (gateway, epoch)).fetchone()
        return int(row[0]), str(row[1])


class PostgresStore(Store):
    """PostgreSQL via psycopg 3. `schema` (created if missing) isolates a deployment or a test run."""

    placeholder = "%s"

    def __init__(self, dsn: str, *, schema: str | None = None) -> None:
        super().__init__()
        import psycopg  # lazy: the cloud extra is optional

        self.schema = schema
        try:
            self._conn = psycopg.connect(dsn, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(_connect_problem(dsn, e)) from e
        try:
            if schema:
                if not schema.replace("_", "").isalnum():
                    raise StoreError(f"schema {schema!r}: use letters, digits and underscores only")
                self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self._conn.execute(f'SET search_path TO "{schema}"')
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            self._migrate_commands()
            self._done()
        except psycopg.Error as e:
            raise StoreError(f"cannot use the PostgreSQL database ({e})") from e

    def _command_columns(self) -> set[str]:
        rows = self._x("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                       "AND table_name = 'commands'").fetchall()
        return {str(r[0]) for r in rows}

    def _migrate_commands(self) -> None:
        """A `commands` table from before `state` becomes today's, inside the opening transaction: the new columns
        added, `sent_at` made nullable, the old `sent_at` kept as `recorded_at`, the state `unknown`. The table is
        locked and checked again first: another receiver or operator may be doing the same."""
        if "state" in self._command_columns():
            return
        self._x("LOCK TABLE commands IN ACCESS EXCLUSIVE MODE")
        if "state" in self._command_columns():
            return
        self._x(f"ALTER TABLE commands ADD COLUMN recorded_at TEXT, ADD COLUMN state TEXT NOT NULL DEFAULT "
                f"'{UNKNOWN}', ADD COLUMN problem TEXT, ALTER COLUMN sent_at DROP NOT NULL")
        self._x("UPDATE commands SET recorded_at = sent_at, sent_at = NULL")
        log.info("migrated the commands table: %s", MIGRATED)

    def _begin(self) -> None:
        pass  # psycopg opens a transaction on the first statement

    def is_outage(self, e: BaseException) -> bool:
        import psycopg

        return super().is_outage(e) or isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)

    def _lock_chain(self, gateway: str, epoch: int) -> tuple[int, str]:
        self._x("INSERT INTO chain (gateway, epoch, contiguous_through, head_hash) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (gateway, epoch) DO NOTHING", (gateway, epoch, ZERO_HASH))
        row = self._x("SELECT contiguous_through, head_hash FROM chain WHERE gateway = ? AND epoch = ? FOR UPDATE",
                      (gateway, epoch)).fetchone()
        return int(row[0]), str(row[1])

    def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests)."""
        if self.schema:
            self._undo()
            self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            self._done()


def _connect_problem(dsn: str, e: Exception) -> str:
    """psycopg's connect error (several lines, libpq's words) as one line saying what to do."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    host, port, user = info.get("host") or "localhost", info.get("port") or 5432, info.get("user") or "postgres"
    text = " ".join(str(e).split())
    reason = text.rsplit(" failed: ", 1)[-1].removeprefix("FATAL: ").split(" Is the server running")[0]
    missing = re.search(r'database "([^"]+)" does not exist', text)
    if missing:
        return (f'the PostgreSQL server at {host}:{port} has no database "{missing[1]}": create it first (createdb '
                f"-h {host} -p {port} -U {user} {missing[1]}; register and serve then make the tables), or check --db")
    if any(w in text for w in ("refused", "timeout", "resolve host", "translate host name", "No route")):
        return (f"cannot reach the PostgreSQL server at {host}:{port} ({reason}); is it running, and are --db's "
                "host and port right?")
    return f"the PostgreSQL server at {host}:{port} refused us ({reason}); check --db's user, password and database"


def open_store(db: str, *, schema: str | None = None, create: bool = True) -> Store:
    """`postgresql://...` (or `postgres://`) opens PostgreSQL; anything else is a SQLite file path.

    `create=False` is for commands that only read or need a registered gateway: a SQLite path with no database at it
    (a mistyped `--db`) raises NoDatabase instead of leaving a new empty database there. A DSN names a server's
    database, which is never created here, so `create` does not apply to it."""
    if db.startswith(("postgresql://", "postgres://")):
        return PostgresStore(db, schema=schema)
    return SqliteStore(db, create=create)
