"""`Ledger`: the one object the rest of Koto holds, composing the store, the envelope, verify, usage and retention
(its read-only questions are in `queries`, a base class).

It owns the connection, the writer lock and one mutex, and gives each part the connection inside that mutex: the
parts know SQL or bytes, the facade knows which of them run together in one transaction (an append is the records,
the chain head, the checkpoints, the documents and the settings, all or nothing). Acks, reading records back, and
writing the checkpoints/docs/kv beside the records are small enough to live here (reading them is in `queries`).

An ack may be held (`mark_acked(hold=True)`): verified at once and counted at once by everything that asks this
object (`acked_through`, `unacked`, `last_ack`...), but written to the file only inside the next `append` that
commits anything, by `write_ack`, or at `close`. A commit costs the SD card ~35 KiB whatever it carries, so an ack
of its own cost about as much as the records it acked. Pruning reads the file, so it only ever uses a written ack;
another process (`koto usage`) sees the ack once it is written.

The daemon opens its ledger `exclusive` (no `ledger.db-shm` on the SD card) and lends it to readers in other
processes (`serve_readers`, about once a second; `lending`). A reader (`key=None`) asks for it with a lease
(`lease`) before it connects.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from koto.canonical import MAX_SAFE_INT
from koto.signing import PrivateKey, PublicKey

from ..errors import LedgerError, LedgerGone
from ..records import Draft
from . import acks, retention, store
from .acks import AckOutcome
from .envelope import Envelope, Stored, cycles_named
from .fileguard import FileGuard, refuse_if_rescued
from .lease import ReaderLease, locked_message, reader_lease
from .lending import Lender, open_exclusive
from .queries import Doc, Queries
from .store import INSERT_SQL, RESERVED_KV
from .verify import VerifyReport, verify_chain

T = TypeVar("T")

# An upsert, not INSERT OR REPLACE: the row is updated in place (same rowid, same index entry), so a checkpoint
# rewrites the one page that holds it instead of deleting and re-inserting it (table and index pages: SD writes).
CHECKPOINT_UPSERT = ("INSERT INTO checkpoints (name, state) VALUES (?,?) "
                     "ON CONFLICT(name) DO UPDATE SET state=excluded.state")


class Ledger(Queries):
    """The gateway's ledger database. Open with `Ledger.open(...)`; use as a context manager or call `close()`.

    One process writes (it holds an advisory lock on `<db>.lock`); any number may read (`key=None`), e.g.
    `koto usage` and `koto verify` while the daemon runs (a daemon that holds the ledger `exclusive` lends it to
    them: `serve_readers`). Methods are thread-safe (one internal lock), so the daemon may call `append` from a
    worker thread to keep the fsync off its event loop.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        identity: store.Identity,
        *,
        key: PrivateKey | None,
        lock_fd: int | None,
        lease: ReaderLease | None = None,
        lender: Lender | None = None,
    ) -> None:
        self._conn = conn
        self.path = path
        self.gateway_id = identity.gateway_id
        self.gateway_subject = identity.gateway_subject
        self.epoch = identity.epoch
        self._key = key
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._envelope = Envelope(
            epoch=identity.epoch, gateway_id=identity.gateway_id, gateway_subject=identity.gateway_subject
        )
        self._closed = False
        # A writer checks before every commit that its path still names this file (see `fileguard`).
        self._guard = FileGuard.of(path) if key is not None else None
        self._gone: LedgerGone | None = None
        # The checkpoints as stored (canonical JSON text), so an unchanged one is not written again: a page less in
        # the WAL for every such checkpoint (the pricing state rides along with every batch). Writer only.
        self._ckpt_stored: dict[str, str] = (
            dict(conn.execute("SELECT name, state FROM checkpoints").fetchall()) if key is not None else {})
        # A verified ack not yet in the file (0: none), and the `acks` rows (through, at_ms) of the acks held since the
        # last write: `mark_acked(hold=True)`, written with the next append, by `write_ack` or at `close`.
        self._held_ack = 0
        self._held_rows: list[tuple[int, int]] = []
        # A reader's lease (released after its connection closes); an exclusive writer's lender (`lending`).
        # `_cursors`: cursors read across mutex releases (`iter_usage`), which a reopen would break.
        self._lease = lease
        self._lender = lender
        self._cursors = 0

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
        exclusive: bool = False,
    ) -> Ledger:
        """Open (with a key: create if missing) the ledger at `path` for `gateway_id`.

        `key=None` opens an existing ledger for reading (queries, `verify`, acks and settings, but no `append`); it
        first asks the daemon, if one holds the ledger exclusively, to lend it (a reader lease, held until `close`),
        and waits up to `store.BUSY_MS` for it. `exclusive` (a writer only: the daemon) holds the file for this
        process alone and lends it when readers ask (`serve_readers`); should a reader already be in (with a lease,
        or a `sqlite3` shell without one), it opens lent and takes the file back later.
        `epoch` is used only when the database is created (default: the wall clock's seconds, the only time the
        ledger reads a clock, and never for a record); given for an existing database it must match.
        """
        p = Path(path)
        if not gateway_id:
            raise LedgerError(f"{p}: a gateway id is required")
        if key is None and not p.exists():
            raise LedgerError(f"{p}: no ledger at this path (run `koto provision` or start the gateway first)")
        if key is None:
            return cls._open_reader(p, gateway_id, gateway_subject, epoch)
        refuse_if_rescued(p)
        if not exclusive:
            conn, lock_fd, identity = store.open_db(p, gateway_id, gateway_subject, epoch, writer=True)
            return cls._made(conn, p, identity, key=key, lock_fd=lock_fd)
        conn, lock_fd, identity, lender = open_exclusive(p, gateway_id, gateway_subject, epoch)
        try:
            return cls._made(conn, p, identity, key=key, lock_fd=lock_fd, lender=lender)
        except BaseException:
            lender.close()
            raise

    @classmethod
    def _open_reader(cls, p: Path, gateway_id: str, subject: str | None, epoch: int | None) -> Ledger:
        """A reader: the lease first, then the connection; the lease is let go on every way out but success."""
        lease = reader_lease(p)
        try:
            try:
                conn, lock_fd, identity = store.open_db(p, gateway_id, subject, epoch, writer=False)
            except LedgerError as e:
                if store.is_busy(e.__cause__):  # the daemon holds it and did not lend it
                    raise LedgerError(locked_message(p, lease, store.BUSY_MS / 1000)) from e
                raise
            return cls._made(conn, p, identity, key=None, lock_fd=lock_fd, lease=lease)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _made(cls, conn: sqlite3.Connection, p: Path, identity: store.Identity, *, key: PrivateKey | None,
              lock_fd: int | None, lease: ReaderLease | None = None, lender: Lender | None = None) -> Ledger:
        """The object around an open connection; should making it fail, the connection and the lock are let go
        (the caller lets go of the lease or lender)."""
        try:
            return cls(conn, p, identity, key=key, lock_fd=lock_fd, lease=lease, lender=lender)
        except BaseException:
            conn.close()
            store.release_lock(lock_fd)
            raise

    def close(self) -> None:
        """Write a held ack (if the file can no longer take it, it is dropped: the cloud gets those records again at
        the next start, stores nothing twice and acks them again), then close the file and release the lock."""
        with self._mutex:
            if self._closed:
                return
            if self._held_ack:
                with contextlib.suppress(LedgerError):
                    self.write_ack()
            self._closed = True
            self._conn.close()
            store.release_lock(self._lock_fd)
            self._lock_fd = None
            if self._lease is not None:
                self._lease.release()  # after the connection: the daemon may take the file back from here on
            if self._lender is not None:
                self._lender.close()

    # ---------------------------------------------------------------------------------------------- lending

    @property
    def lent(self) -> bool:
        """True while an exclusive writer has lent its ledger (its connection is in the normal locking mode)."""
        with self._mutex:
            return self._lender is not None and self._lender.lent

    def serve_due(self) -> bool:
        """Whether `serve_readers` may have something to do now (`Lender.due`): a cheap look, without the mutex,
        from the one task that calls `serve_readers` (between its calls nothing else changes the lender)."""
        lender = self._lender
        try:
            return lender is not None and not self._closed and lender.due()
        except ValueError:  # closed by another thread just now: `serve_readers` says so
            return True

    def serve_readers(self) -> str | None:
        """Lend the ledger to readers who ask, and take it back when they are gone; for a writer opened
        `exclusive`, called about once a second (from a worker thread: a lend or reclaim closes the connection,
        which folds the WAL into the database, and opens it again).

        Returns "lent" (readers hold a lease: the connection is now in the normal locking mode, with WAL and -shm
        as before the daemon owned its file), "reclaimed" (no lease is held any more: exclusive again, no -shm is
        written), "refused" (the file system would not open it for sharing, a full disk: it stays exclusive, the
        readers wait, `lend_refused` says why, and the next attempt comes after a backoff), or None (nothing to do:
        one flock test; or a reclaim that could not be done because a reader without a lease still has the file
        open; it stays lent and tries again after a backoff, `lending.py`).
        Everything this object holds stays: the writer lock, held acks, the checkpoints as stored, the envelope. A
        path that no longer names our file raises `LedgerGone` (as a commit would) before anything is reopened."""
        if self._lender is None:
            return None
        with self._mutex:
            if self._closed:
                raise LedgerError(f"{self.path}: the ledger is closed")
            self._conn, said = self._lender.serve(self._conn, busy=self._cursors > 0,
                                                  check_writable=self._check_writable, check_path=self._check_path)
            return said

    @property
    def lend_refused(self) -> str:
        """Why the last lend to readers could not be made ("" when none was refused since the last lend)."""
        refused = self._lender.refused if self._lender is not None else None
        return "" if refused is None else str(refused)

    def _check_path(self) -> None:
        """`LedgerGone` (recorded) when the path no longer names the file we opened; nothing to rescue it from."""
        if self._guard is not None and self._gone is None and (found := self._guard.problem()):
            self._gone = LedgerGone(str(self.path), found, "")
        if self._gone is not None:
            raise self._gone

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
        batch. A checkpoint equal to the one stored is not rewritten, and a call left with nothing to write writes
        nothing (no transaction). Returns the stored records in seq order.
        """
        if self._key is None:
            raise LedgerError(f"{self.path}: opened without the device key; cannot append records")
        if kv:
            self._check_kv_keys(kv)
        # Compact JSON: a meter's state is ~900 bytes so, with the ledger's 1 KiB pages, it fits its leaf page instead
        # of spilling onto an overflow page that every rewrite writes again (older rows, with spaces, read the same).
        ckpt_rows = [(name, json.dumps(state, sort_keys=True, separators=(",", ":")))
                     for name, state in (checkpoints or {}).items()]
        doc_rows = [_doc_row(d) for d in docs or ()]
        with self._mutex:
            self._check_writable()
            ckpt_rows = [(name, state) for name, state in ckpt_rows if self._ckpt_stored.get(name) != state]
            if not (drafts or ckpt_rows or doc_rows or kv):
                return []  # a held ack alone waits for the next commit (or `write_ack`)
            conn = self._conn
            with store.transaction(conn, self.path, "append failed, nothing was stored"):
                stored = self._append_records(drafts, self._key) if drafts else []
                if ckpt_rows:
                    conn.executemany(CHECKPOINT_UPSERT, ckpt_rows)
                if doc_rows:
                    conn.executemany("INSERT OR REPLACE INTO docs (kind, id, version, body) VALUES (?,?,?,?)", doc_rows)
                if kv:
                    conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?,?)", list(kv.items()))
                if self._held_ack:
                    acks.write(self._conn, self.path, self._held_ack, self._held_rows)
            self._ckpt_stored.update(ckpt_rows)  # committed: only now is it what the file holds
            self._held_ack, self._held_rows = 0, []
        return stored

    def _append_records(self, drafts: Sequence[Draft], key: PrivateKey) -> list[Stored]:
        """Build, chain, sign and insert a batch after the current head, inside the caller's transaction.

        The signature is the largest cost by far (one ECDSA P-256 sign per record, ~20 us); the rest is one JSON
        encode of `data`, a few string joins and one sha256 per record (see docs/ledger.md, Performance)."""
        conn = self._conn
        head_seq, head_hash = store.head(conn)
        spans = store.cycle_spans(conn, cycles_named(drafts))
        rows, stored = self._envelope.seal(self._envelope.prepare(drafts, head_seq, head_hash, spans), key)
        conn.executemany(INSERT_SQL, rows)
        store.set_head(conn, stored[-1].seq, stored[-1].hash)
        return stored

    # ---------------------------------------------------------------------------------------------- reading

    def head(self) -> tuple[int, str]:
        """(last seq, its hash); (0, 64 zeros) for an empty ledger."""
        with self._mutex:
            self._check_open()
            return store.head(self._conn)

    def acked_through(self, *, written: bool = False) -> int:
        """The cloud's cumulative ack: a held one included, or (`written`) only what the file holds, which is what
        pruning and any other process go by."""
        with self._mutex:
            self._check_open()
            return store.acked_through(self._conn, self.path) if written else self._acked()

    def held_ack(self) -> int:
        """The seq a held ack reaches, not yet written to the file; 0 when none is held."""
        with self._mutex:
            return self._held_ack

    def _acked(self) -> int:
        """The acked point, a held ack included (under the mutex)."""
        return max(store.acked_through(self._conn, self.path), self._held_ack)

    def get(self, seq: int) -> Stored | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute(
                "SELECT seq, id, type, kind, hash, body FROM records WHERE seq=?", (seq,)
            ).fetchone()
            acked = self._acked()
        return None if row is None else self._stored(row, acked)

    def iter_records(self, from_seq: int = 1, to_seq: int | None = None, *, chunk: int = 500) -> Iterator[Stored]:
        """Records in seq order, fetched in chunks (safe to interleave with appends)."""
        nxt = from_seq
        hi = to_seq if to_seq is not None else MAX_SAFE_INT
        while True:
            with self._mutex:
                self._check_open()
                rows = self._conn.execute(
                    "SELECT seq, id, type, kind, hash, body FROM records WHERE seq>=? AND seq<=? ORDER BY seq LIMIT ?",
                    (nxt, hi, chunk),
                ).fetchall()
                acked = self._acked()
            if not rows:
                return
            for row in rows:
                yield self._stored(row, acked)
            nxt = rows[-1][0] + 1

    def unacked(self, after_seq: int = 0, limit: int = 100) -> list[Stored]:
        """The next unacked records after `after_seq`, in seq order: what the sync (re)sends, byte-identical."""
        with self._mutex:
            self._check_open()
            acked = self._acked()
            rows = self._conn.execute(
                "SELECT seq, id, type, kind, hash, body FROM records WHERE seq>? ORDER BY seq LIMIT ?",
                (max(after_seq, acked), limit),
            ).fetchall()
        return [self._stored(r, acked) for r in rows]

    def unacked_count(self) -> int:
        with self._mutex:
            self._check_open()
            return store.head(self._conn)[0] - self._acked()

    def _stored(self, row: tuple[Any, ...], acked_through: int) -> Stored:
        seq, rid, typ, kind, h, body = row
        return Stored(seq, rid, self.epoch, typ, kind, h, bytes(body), seq <= acked_through)

    # ---------------------------------------------------------------------------------------------- acks

    def mark_acked(self, epoch: int, through: int, head_hash: str, *, at_wall: float | None = None,
                   hold: bool = False) -> AckOutcome:
        """Honour a cumulative ack from the cloud, only when it names a record we hold with the hash we hold.

        `at_wall` (the caller's clock: the ledger reads none) is when the ack arrived; an advancing ack stores it, so
        `synced_at` can say when a record reached the cloud ("synced on Wednesday 08:03"). With `hold`, an advancing
        ack is checked the same way but kept in memory, to be written with the next `append` (or by `write_ack`, or
        at `close`): no commit of its own. Without, it is written now, with any ack held before it."""
        with self._mutex:
            self._check_open()
            if epoch != self.epoch:
                return AckOutcome.WRONG_EPOCH
            self._check_writable()
            row = [] if at_wall is None else [(through, round(at_wall * 1000))]
            if hold:
                outcome = acks.check(self._conn, through, head_hash, self._acked())
                if outcome is AckOutcome.ADVANCED:
                    self._held_ack = through
                    self._held_rows += row
                return outcome
            with store.transaction(self._conn, self.path, "cannot record the ack"):
                outcome = acks.check(self._conn, through, head_hash, self._acked())
                if outcome is AckOutcome.ADVANCED:
                    acks.write(self._conn, self.path, through, self._held_rows + row)
            if outcome is AckOutcome.ADVANCED:
                self._held_ack, self._held_rows = 0, []
            return outcome

    def write_ack(self) -> bool:
        """Write a held ack in a transaction of its own (its hold has lasted long enough, or the gateway stops).
        Returns False when no ack was held."""
        with self._mutex:
            self._check_writable()
            if not self._held_ack:
                return False
            with store.transaction(self._conn, self.path, "cannot record the ack"):
                acks.write(self._conn, self.path, self._held_ack, self._held_rows)
            self._held_ack, self._held_rows = 0, []
            return True

    def synced_at(self, seq: int) -> float | None:
        """When the cloud acked record `seq` (wall seconds), or None: not acked yet, or acked before the ledger kept
        ack times (then `acked_through` still says that it was)."""
        with self._mutex:
            self._check_open()
            if not store.has_table(self._conn, "acks"):
                return None
            at = acks.first_at_ms(self._conn, seq)
            if at is None:  # acked by a held ack, not written yet
                at = next((at for through, at in self._held_rows if through >= seq), None)
            return None if at is None or seq > self._acked() else at / 1000

    def last_ack(self) -> tuple[int, float] | None:
        """(acked through seq, when) of the latest advancing ack with a known time, or None."""
        with self._mutex:
            self._check_open()
            if not store.has_table(self._conn, "acks"):
                return None
            row = self._held_rows[-1] if self._held_rows else acks.last(self._conn)
            return None if row is None else (row[0], row[1] / 1000)

    # ------------------------------------------------------------------------------------ checkpoints, docs, kv

    def put_doc(self, kind: str, id: str, version: int, body: Mapping[str, Any]) -> None:
        """Store (replace) a document. Version rules (reject stale) belong to the caller that knows the command."""
        row = _doc_row(Doc(kind, id, version, dict(body)))
        self._write("INSERT OR REPLACE INTO docs (kind, id, version, body) VALUES (?,?,?,?)", row)

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
            self._check_writable()
            try:
                self._conn.execute(sql, params)  # autocommit: its own durable transaction
            except sqlite3.Error as e:
                raise LedgerError(f"{self.path}: write failed ({e})") from e

    # ---------------------------------------------------------------------------------------- verify, retention

    def verify(self, public_key: PublicKey, *, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None, from_seq: int | None = None,
               every_signature: bool = True) -> VerifyReport:
        """Walk every stored record offline and check it (see `verify`): the first bad record is named. A big
        ledger is checked by `workers` processes (default one per core); `progress(checked, total)` as it goes.
        `from_seq` checks only the records from there to the head (linked to the stored hash before it);
        `every_signature=False` the last record's signature only (`verify_chain`: a quick check)."""
        with self._mutex:
            self._check_open()
            if self._lender is not None and not self._lender.lent:
                workers = 1  # our file is locked to every other connection, the pool's too: check it here
            # A reader's pool opens `mode=ro` connections of its own: this object's lease keeps the daemon lent
            # (normal locking mode) until it is closed, so they get in as the reader itself did.
            return verify_chain(self._conn, self.epoch, self._envelope.source, public_key, path=self.path,
                                workers=workers, progress=progress, from_seq=from_seq,
                                every_signature=every_signature)

    def prune(self, retain_days: float, now_wall: float, *, max_rows: int | None = None,
              local_only: bool = False) -> int:
        """Delete acked records that ended more than `retain_days` before `now_wall`, oldest first, as a prefix, at
        most `max_rows` of them in this one transaction.

        Never an unacked record (unless `local_only`: no cloud, whose records are folded into `pruned_totals`
        first) and never the chain head. The first kept record's prevhash becomes the anchor `verify` starts from.
        Returns the number of records deleted."""
        with self._mutex:
            self._check_writable()
            return retention.prune(self._conn, self.path, retain_days, now_wall, max_rows=max_rows,
                                   local_only=local_only)

    def wal_checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it (call when idle so the WAL does not grow); False when a
        reader in another connection kept part of it (it never waits for one: `retention.wal_checkpoint`)."""
        with self._mutex:
            self._check_writable()
            return retention.wal_checkpoint(self._conn, self.path)

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{self.path}: the ledger is closed")
        if self._lender is not None and self._lender.broken is not None:
            raise self._lender.broken

    def _check_writable(self) -> None:
        """Open, and (for a writer) its path still names the file it opened: else `LedgerGone`, nothing written."""
        self._check_open()
        if self._gone is not None:
            raise self._gone  # said (and rescued) once; every later write is refused the same way
        if self._guard is not None:
            try:
                self._guard.check(self._conn)
            except LedgerGone as e:
                self._gone = e
                raise


def _doc_row(d: Doc) -> tuple[str, str, int, str]:
    if not d.kind or not d.id or type(d.version) is not int:
        raise LedgerError(f"document {d.kind!r}/{d.id!r}: kind, id and an integer version are required")
    return (d.kind, d.id, d.version, json.dumps(d.body, sort_keys=True, separators=(",", ":")))
