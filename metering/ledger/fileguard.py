"""The ledger file is still the one we opened: checked before every commit, so a file deleted or replaced under a
running writer is never written to again.

Without this, SQLite carries on happily: a deleted `ledger.db` stays open, every commit goes into the unlinked file
(gone for good when the process exits), and the next start creates a new, empty ledger: a second chain, seq 1 again,
and no log line (issue 10). A file copied over it (a restore) would be ignored the same way.

The test is `os.stat(path)` against the device and inode the writer opened. SQLite keeps the file open, so its inode
cannot be reused while we run: the path names our file exactly when `(st_dev, st_ino)` match. A deleted file shows as
the path missing (or naming another inode, once something else is created there); a replaced one as another inode.
One `stat` per commit costs about a microsecond.

When it happens the writer still holds the old file open, so what it held can be saved: `rescue` copies it, through
SQLite's online backup from the open connection, next to the path (`ledger.db.rescued`, or with a number when that
exists), where an operator can put it back. While such a copy lies there, no writer opens the path
(`refuse_if_rescued`): a restart by systemd must not start a second chain at seq 1 beside it, nor continue an older
copy someone restored over it; the operator decides (put the copy back, or move it away for a new epoch).

When the copy cannot be made (the disk that is full is the one the copy would go to, a folder made read-only), a
marker `ledger.db.lost` is left instead (an empty file needs no free data block, only a directory entry): it refuses
a writer the same way, so a restart never makes a new ledger at seq 1 as if nothing had happened. Only when even that
fails is the daemon's error line all that is left; it says so.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import LedgerError, LedgerGone


@dataclass(frozen=True, slots=True)
class FileGuard:
    """The identity of the ledger file a writer opened."""

    path: Path
    dev: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> FileGuard:
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def problem(self) -> str:
        """"" while the path names the file we opened; otherwise what was found there, in words."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the file was deleted"
        except OSError:
            return ""  # cannot tell (a permission change): the commit itself will say what is wrong
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return "another file is at its path now"
        return ""

    def check(self, conn: sqlite3.Connection) -> None:
        """Raise `LedgerGone` (after saving what `conn` still reaches) when the path no longer names our file."""
        found = self.problem()
        if found:
            raise LedgerGone(str(self.path), found, rescue(conn, self.path))


def rescued_copies(path: Path) -> list[Path]:
    """`<path>.rescued` and `<path>.rescued-N`; not the files a reader of one leaves beside it (its `.readers`
    lease file, a `-wal`), which must not keep refusing the writer once the copy is put back."""
    named = re.compile(re.escape(path.name) + r"\.rescued(-[0-9]+)?")
    return sorted(p for p in path.parent.glob(f"{path.name}.rescued*") if named.fullmatch(p.name))


def lost_marker(path: Path) -> Path:
    """The marker left when the ledger at `path` was deleted or replaced under Koto and no copy could be saved."""
    return path.with_name(path.name + ".lost")


def refuse_if_rescued(path: Path) -> None:
    """Refuse to write `path` while a rescued copy of the ledger that was there lies next to it."""
    copies = rescued_copies(path)
    if copies:
        raise LedgerError(
            f"{path}: {copies[0]} holds this ledger as it was when the file was deleted or replaced under Koto; put it "
            f"back (mv {copies[0]} {path}) or, to start a new epoch, move it out of {path.parent} (keep it: it may "
            "hold records the cloud has not acknowledged)"
        )
    marker = lost_marker(path)
    if marker.exists():
        raise LedgerError(
            f"{path}: the ledger that was here was deleted or replaced under Koto and could not be saved ({marker}); "
            f"restore it from a backup to {path}, or to start a new epoch accept the loss: rm {marker}"
        )


def rescue(conn: sqlite3.Connection, path: Path) -> str:
    """Copy the database `conn` has open to a free `<path>.rescued[-N]`; its name, or "" when that failed."""
    for n in range(100):
        target = path.with_name(f"{path.name}.rescued" + (f"-{n}" if n else ""))
        if not target.exists():
            break
    else:
        return _mark_lost(path)
    try:
        dst = sqlite3.connect(str(target))
        try:
            conn.backup(dst)
        finally:
            dst.close()
    except (sqlite3.Error, OSError):
        target.unlink(missing_ok=True)
        return _mark_lost(path)
    return str(target)


def _mark_lost(path: Path) -> str:
    """Leave `lost_marker(path)` (see the module docstring); "" either way: no copy was saved."""
    marker = lost_marker(path)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        return ""
    try:
        os.write(fd, b"the ledger was deleted or replaced under Koto and no copy could be saved\n")
    except OSError:
        pass  # the name alone is the marker
    finally:
        os.close(fd)
    return ""
