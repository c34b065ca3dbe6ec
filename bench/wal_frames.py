"""Where a ledger's SD-card bytes go: every WAL frame of a run, grouped per commit and named by the b-tree it holds.

Used by `bench/sd_writes.py --frames` (and `wal_pages` by `--breakdown`): the bench holds a read transaction open on
the ledger for the whole run, so no checkpoint can reset the WAL and every page any commit wrote stays in it;
afterwards the WAL is read frame by frame (a 24-byte header each: page number, and for a commit's last frame the
database size) and each page number is named from SQLite's `dbstat` table (records, records_usage, kv, checkpoints,
...). A page written by many commits counts once per commit: that is what a commit costs in the WAL. The run's
`write_bytes` in this mode is not the budget's (the WAL is never checkpointed), only the frame counts are.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FrameReport:
    page_size: int
    commits: int = 0
    frames: int = 0
    by_tree: Counter[str] = field(default_factory=Counter)
    # commits grouped by the set of trees they touched (records commits vs checkpoint-only commits)
    shapes: Counter[tuple[str, ...]] = field(default_factory=Counter)
    frames_by_shape: Counter[tuple[str, ...]] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"WAL frames: {self.frames} in {self.commits} commits ({self.frames / max(self.commits, 1):.1f} "
               f"pages per commit of {self.page_size} bytes + 24)"]
        out.append("  pages written, by b-tree (summed over commits):")
        for name, n in self.by_tree.most_common():
            out.append(f"    {name:<28}{n:>7}  {n / max(self.commits, 1):5.2f}/commit")
        out.append("  commits by the trees they touched:")
        for shape, n in self.shapes.most_common(8):
            out.append(f"    {n:>5} x {self.frames_by_shape[shape] / n:5.1f} pages: {', '.join(shape)}")
        return out


def copy_ledger(db: Path, dest: Path) -> Path:
    """Copy the database and its WAL (while the run's pinning reader still holds the WAL whole)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, dest / db.name)
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, dest / wal.name)
    return dest / db.name


def analyse(db_copy: Path) -> FrameReport:
    wal = db_copy.with_name(db_copy.name + "-wal").read_bytes()
    names = _page_names(db_copy)
    magic, _version, page_size, _seq, salt1, salt2 = struct.unpack(">IIIIII", wal[:24])
    if magic not in (0x377F0682, 0x377F0683):
        raise ValueError(f"{db_copy}: not a WAL")
    report = FrameReport(page_size)
    frame = 24 + page_size
    pages: list[int] = []
    off = 32
    while off + frame <= len(wal):
        pgno, commit, s1, s2 = struct.unpack(">IIII", wal[off:off + 16])
        if (s1, s2) != (salt1, salt2):
            break
        pages.append(pgno)
        off += frame
        if commit:
            report.commits += 1
            report.frames += len(pages)
            trees = [names.get(p, "freelist/new") for p in pages]
            report.by_tree.update(trees)
            shape = tuple(sorted(set(trees)))
            report.shapes[shape] += 1
            report.frames_by_shape[shape] += len(pages)
            pages = []
    return report


def wal_pages(wal_path: Path) -> tuple[int, int, int]:
    """(committed frames, distinct pages among them, page size) of a live WAL: what a checkpoint would copy."""
    wal = wal_path.read_bytes()
    if len(wal) < 32:
        return 0, 0, 0
    magic, _version, page_size, _seq, salt1, salt2 = struct.unpack(">IIIIII", wal[:24])
    if magic not in (0x377F0682, 0x377F0683):
        return 0, 0, 0
    frame = 24 + page_size
    committed: set[int] = set()
    pending: list[int] = []
    frames = n = 0
    off = 32
    while off + frame <= len(wal):
        pgno, commit, s1, s2 = struct.unpack(">IIII", wal[off:off + 16])
        if (s1, s2) != (salt1, salt2):
            break
        pending.append(pgno)
        n += 1
        off += frame
        if commit:
            committed.update(pending)
            frames = n
            pending = []
    return frames, len(committed), page_size


def _page_names(db_copy: Path) -> dict[int, str]:
    """Page number -> b-tree name, from dbstat over the copy (its WAL applied): the final owner of each page."""
    conn = sqlite3.connect(str(db_copy))
    try:
        rows = conn.execute("SELECT pageno, name, pagetype FROM dbstat").fetchall()
    finally:
        conn.close()
    out: dict[int, str] = {}
    for pageno, name, pagetype in rows:
        out[int(pageno)] = f"{name} ({pagetype})" if pagetype == "overflow" else str(name)
    out.setdefault(1, "header (page 1)")
    if out[1] == "sqlite_schema":
        out[1] = "page 1 (header+schema)"
    return out
