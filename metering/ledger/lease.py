"""The reader lease: how another process asks the daemon to lend it the ledger it holds exclusively.

Why: the daemon opens its ledger with `locking_mode=EXCLUSIVE` (`store.connect(exclusive=True)`), so SQLite keeps
the WAL index in the daemon's heap and never creates `ledger.db-shm`, a shared mapping whose dirty pages the kernel
writes back to the SD card: ~43 % of the bytes of every commit (bench/sd_writes.py --breakdown, issue 10). The
price is that no other connection, in any process, can read the file: `koto usage`, `koto verify`, `koto doctor`,
the support bundle. So the daemon lends it when asked.

The ask is a `flock` on `<db>.readers`, a file beside the ledger that holds nothing (it is never written):

- a reader takes `LOCK_SH` for as long as its connection is open (`reader_lease`); many readers share it, and it
  never waits, because the writer only ever tests the lock (`LOCK_EX | LOCK_NB`) and lets go of it at once, or
  holds it for the few milliseconds of a reclaim;
- the writer tests it about once a second (`LeaseWatch`, from `Ledger.serve_readers`): held by someone means
  readers are waiting, and the daemon reopens its connection in the normal locking mode (WAL and -shm, readers get
  in); free again means they are gone, and it reopens exclusive.

A lock dies with its process, so a reader that crashes cannot keep the daemon lent. flock writes nothing to disk.
A reader that cannot open the lease file at all (a read-only medium, no permission, a copied ledger without it)
reads without one, as before the lease existed: on a ledger no daemon holds, that is all it needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

SUFFIX = ".readers"


def lease_path(db: Path | str) -> Path:
    """`<db>.readers`, beside the ledger."""
    p = Path(db)
    return p.with_name(p.name + SUFFIX)


class ReaderLease:
    """A reader's shared lock on `<db>.readers` (or none: `held` is False and `why` says why). Release it after
    the reader's connection is closed; releasing twice is harmless."""

    def __init__(self, path: Path, fd: int | None, why: str = "") -> None:
        self.path = path
        self._fd = fd
        self.why = why

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of this open file drops its flock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def reader_lease(db: Path | str) -> ReaderLease:
    """Ask the daemon (if one holds the ledger at `db`) to lend it: a shared lock on `<db>.readers`, taken at once.

    The file is created if missing and the directory lets us (mode 0600; made by root for another user's ledger,
    it is given to the ledger's owner, or the daemon could not open it). When it cannot be opened or locked, the
    lease is not held and the caller reads without one."""
    path = lease_path(db)
    try:
        fd = _open_lease_file(path, Path(db))
    except OSError as e:
        return ReaderLease(path, None, e.strerror or str(e))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # no wait: the writer never holds LOCK_EX for longer than a reclaim
    except OSError as e:
        os.close(fd)
        return ReaderLease(path, None, e.strerror or str(e))
    return ReaderLease(path, fd)


def _open_lease_file(path: Path, db: Path) -> int:
    """The lease file's descriptor: read-write and created if need be, else read only (flock needs no more)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return os.open(path, os.O_RDONLY)  # a read-only directory: it may still be there
    else:
        with contextlib.suppress(OSError):
            st = os.stat(db)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)  # root reading koto's ledger: the file is koto's
        return fd
    try:
        return os.open(path, os.O_RDWR)
    except OSError:
        return os.open(path, os.O_RDONLY)


class LeaseWatch:
    """The writer's side: whether any reader holds a lease. Opened (the file created 0600) with the ledger."""

    def __init__(self, db: Path | str) -> None:
        self.path = lease_path(db)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except PermissionError:
            self._fd = os.open(self.path, os.O_RDONLY)  # someone else's file we may read: flock works on it

    def readers_waiting(self) -> bool:
        """True while a reader holds the lease; one flock test (two syscalls when none does), no disk write."""
        with self.excluding_readers() as alone:
            return not alone

    @contextlib.contextmanager
    def excluding_readers(self) -> Iterator[bool]:
        """Yields True while holding the lease exclusively (no reader has one, and a reader that comes meanwhile
        waits for the block to end), False when a reader holds it."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path}: the lease watch is closed")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def locked_message(db: Path | str, lease: ReaderLease | None, waited_s: float) -> str:
    """What a reader says when the ledger stayed locked: the daemon did not lend it, or we could not ask."""
    if lease is not None and not lease.held:
        return (f"{db}: the gateway holds its ledger, and this process could not ask to borrow it ({lease.path}: "
                f"{lease.why}); run it as the gateway's user (sudo -u koto ...)")
    return (f"{db}: the gateway holds its ledger and did not lend it within {waited_s:g} s (is koto.service hung? "
            "journalctl -u koto)")
