"""An exclusive writer's side of the reader lease: open the file for this process alone, lend it while readers hold a
lease, take it back when they are gone.

The daemon opens its ledger with SQLite's exclusive locking mode: the WAL index lives in its heap and no `-shm`
file is written (~43 % of a commit's bytes on the SD card, docs/ledger.md), but no other process can read the file.
A reader takes a shared lease on `<db>.readers` (`lease.reader_lease`) before it connects; `Lender.serve`, called
about once a second, sees it and reopens the writer's connection in the normal locking mode ("lent"), then
exclusive again once no lease is held ("reclaimed"). A reopen closes the connection, which folds the WAL into the
database: two WAL checkpoints per reader's visit.

The facade (`Ledger`) owns the connection and the mutex; this object holds what lending needs besides (the watch on
the lease file, whether the connection is lent, and a reopen that failed) and hands the facade its new connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..errors import LedgerError, LedgerGone
from . import store
from .lease import LeaseWatch

# How long the daemon's reclaim waits for a lock someone else holds (a reader that took no lease, e.g. a `sqlite3`
# shell): it holds the ledger's mutex meanwhile, so appends wait too. Not got: it stays lent and tries again.
RECLAIM_BUSY_MS = 50
# After a reclaim such a reader foiled, the next looks skip the attempt: 1, 2, 4 ... up to this many (about half a
# minute at one look a second), so a shell left open all day costs the appends 50 ms every half minute, not each second.
RECLAIM_BACKOFF_MAX = 32


def open_exclusive(p: Path, gateway_id: str, subject: str | None,
                   epoch: int | None) -> tuple[sqlite3.Connection, int | None, store.Identity, Lender]:
    """The writer's connection, exclusive; lent at once should a reader already be in (with a lease, or a `sqlite3`
    shell without one), and taken back later."""
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        watch = LeaseWatch(p)
    except OSError as e:
        raise LedgerError(f"{p}: cannot open the reader lease file {p.name}.readers beside it ({e.strerror}); "
                          "it must be the gateway user's (chown it, or remove it: the gateway makes it again)") from e
    try:
        lent = watch.readers_waiting()
        try:
            conn, lock_fd, identity = store.open_db(p, gateway_id, subject, epoch, writer=True, exclusive=not lent,
                                                    open_busy_ms=RECLAIM_BUSY_MS)
        except LedgerError as e:
            if lent or not store.is_busy(e.__cause__):
                raise
            lent = True  # someone reads without a lease: start lent, reclaim when they are gone
            conn, lock_fd, identity = store.open_db(p, gateway_id, subject, epoch, writer=True)
    except BaseException:
        watch.close()
        raise
    return conn, lock_fd, identity, Lender(p, watch, lent=lent)


class Lender:
    """Whether the writer's connection is lent, and the switch between the two modes. `broken`: a reopen failed and
    the ledger has no connection until the next `serve` makes one (every call on the ledger raises it meanwhile)."""

    def __init__(self, path: Path, watch: LeaseWatch, *, lent: bool) -> None:
        self.path = path
        self.watch = watch
        self.lent = lent
        self.broken: LedgerError | None = None
        self.refused: LedgerError | None = None  # why the last lend could not be made (it kept the file: see `_reopen`)
        self.foiled = 0  # reclaims a reader without a lease prevented since the last lend
        self._skip = 0  # looks to let pass before the next reclaim attempt

    def due(self) -> bool:
        """Whether `serve` may have something to do: lent (to take back when the readers are gone), broken (to
        reopen), or a reader holds a lease. Not lent, the answer is one flock test (no thread, no mutex): the daemon
        looks this way on its event loop each second and hops to a worker thread only when it is True."""
        return self.lent or self.broken is not None or self.watch.readers_waiting()

    def serve(self, conn: sqlite3.Connection, *, busy: bool, check_writable: Callable[[], None],
              check_path: Callable[[], None]) -> tuple[sqlite3.Connection, str | None]:
        """One look (under the facade's mutex): the connection to use from now on, and "lent", "reclaimed" or None
        (nothing to do, or a reclaim a reader without a lease prevents: it stays lent, and the next attempt comes
        after 1, 2, 4 ... up to RECLAIM_BACKOFF_MAX looks).
        `busy`: the facade has a cursor open across its mutex (`iter_usage`), which a reopen would break: no switch.
        `check_writable` runs before the connection that could rescue a replaced file is closed; `check_path` after
        a new one is open (a file put at the path in between is not ours, and is never written)."""
        if self.broken is not None:  # the last reopen failed: a connection first, lent
            conn = self._connect(exclusive=False, check_path=check_path)
            self.broken, self.lent = None, True
            return conn, "lent"
        if not self.lent:
            if busy or not self.watch.readers_waiting():
                return conn, None
            if self._skip > 0:  # backing off from a lend the file system refused
                self._skip -= 1
                return conn, None
            check_writable()
            conn, lent = self._reopen(conn, exclusive=False, check_path=check_path)
            if not lent:
                self.foiled += 1
                self._skip = min(1 << min(self.foiled - 1, 16), RECLAIM_BACKOFF_MAX)
                return conn, "refused"
            self.lent, self.foiled, self._skip, self.refused = True, 0, 0, None
            return conn, "lent"
        if self._skip > 0:  # backing off from a reader without a lease
            self._skip -= 1
            return conn, None
        with self.watch.excluding_readers() as alone:  # a reader that comes now waits for the reclaim to end
            if not alone or busy:
                return conn, None
            check_writable()
            conn, done = self._reopen(conn, exclusive=True, check_path=check_path)
            if not done:
                self.foiled += 1
                self._skip = min(1 << min(self.foiled - 1, 16), RECLAIM_BACKOFF_MAX)
                return conn, None
            self.lent, self.foiled = False, 0
            return conn, "reclaimed"

    def close(self) -> None:
        self.watch.close()

    def _reopen(self, conn: sqlite3.Connection, *, exclusive: bool,
                check_path: Callable[[], None]) -> tuple[sqlite3.Connection, bool]:
        """Close the connection and open the file again, exclusive or not; True when it is now as asked. A failed
        exclusive attempt falls back to the normal mode, and a failed normal one (a lend) to the exclusive mode: the
        normal mode needs the `-shm` file, which a full disk refuses ("disk I/O error"), while the exclusive mode
        keeps the WAL index in memory and opens (`refused` says why; the reader waits). Should both fail, the
        lender is `broken` (every call on the ledger raises it until a later `serve` opens the file)."""
        conn.close()  # the last connection to close folds the WAL into the database and deletes it
        try:
            if exclusive:
                try:
                    return self._connect(exclusive=True, check_path=check_path), True
                except sqlite3.Error:
                    pass  # a reader without a lease has the file open; stay lent
            try:
                return self._connect(exclusive=False, check_path=check_path), not exclusive
            except LedgerGone:
                raise
            except LedgerError as e:
                if exclusive:
                    raise
                try:
                    kept = self._connect(exclusive=True, check_path=check_path)
                except sqlite3.Error:
                    raise e from None
                self.refused = e
                return kept, False
        except LedgerError as e:  # cannot open it, or another file is at the path now (`LedgerGone`)
            self.broken = e
            raise

    def _connect(self, *, exclusive: bool, check_path: Callable[[], None]) -> sqlite3.Connection:
        if exclusive:
            conn = store.connect(self.path, exclusive=True, open_busy_ms=RECLAIM_BUSY_MS)  # sqlite3.Error: busy
        else:
            try:
                conn = store.connect(self.path)
            except sqlite3.Error as e:
                raise LedgerError(f"{self.path}: cannot reopen the ledger database ({e})") from e
        try:
            check_path()
        except BaseException:
            conn.close()
            raise
        return conn
