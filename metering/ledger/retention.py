"""What leaves the ledger and when: pruning acked records past retention, the anchor it leaves, WAL checkpoints.

Nothing leaves before the cloud has it: `prune` deletes only a prefix of acked records that ended before the
retention cut-off, never the chain head (the next record links to it), and records the first kept seq and its
prevhash as the anchor `verify` starts from. The caller (the `Ledger` facade) holds its lock around these.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import LedgerError
from .store import K_ANCHOR_PREV, K_ANCHOR_SEQ, acked_through, head, kv_required, transaction


def prune(conn: sqlite3.Connection, path: Path, retain_days: float, now_wall: float) -> int:
    """Delete acked records that ended more than `retain_days` before `now_wall`, oldest first, as a prefix, in one
    transaction. Returns the number of records deleted."""
    cutoff_ms = round((now_wall - retain_days * 86400) * 1000)
    deleted = 0
    with transaction(conn, path, "prune failed, nothing was deleted"):
        head_seq, _ = head(conn)
        limit = min(acked_through(conn, path), head_seq - 1)
        first = int(kv_required(conn, path, K_ANCHOR_SEQ))
        # The prefix ends before the first record in range that is still within retention.
        row = conn.execute(
            "SELECT min(seq) FROM records WHERE seq>=? AND seq<=? AND t_end_ms>=?", (first, limit, cutoff_ms)
        ).fetchone()
        last = (row[0] - 1) if row[0] is not None else limit
        if last >= first:
            h = conn.execute("SELECT hash FROM records WHERE seq=?", (last,)).fetchone()
            if h is None:
                raise LedgerError(f"{path}: seq {last} is missing; run `koto verify`")
            deleted = conn.execute("DELETE FROM records WHERE seq<=?", (last,)).rowcount
            conn.executemany(
                "UPDATE kv SET value=? WHERE key=?", ((str(last + 1), K_ANCHOR_SEQ), (str(h[0]), K_ANCHOR_PREV))
            )
    return int(deleted)


def anchor(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """(first kept seq, its prevhash): where the local chain starts after pruning; (1, zeros) before."""
    return int(kv_required(conn, path, K_ANCHOR_SEQ)), kv_required(conn, path, K_ANCHOR_PREV)


def wal_checkpoint(conn: sqlite3.Connection, path: Path) -> None:
    """Fold the WAL into the database and truncate it (call when idle so the WAL does not grow)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as e:
        raise LedgerError(f"{path}: WAL checkpoint failed ({e})") from e
