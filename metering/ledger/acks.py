"""The cloud's cumulative acks as the file holds them: what an ack means against the records, writing the acked
point and the acks' arrival times, and reading them back. SQL over a connection the caller (`Ledger`) holds inside
its mutex and, for a write, its transaction; the facade keeps the held ack (verified, not yet written) and adds it.
"""

from __future__ import annotations

import sqlite3
from enum import Enum
from pathlib import Path

from . import retention, store
from .store import K_ACKED


class AckOutcome(Enum):
    """The ledger's answer to a cumulative ack from the cloud (`Ledger.mark_acked`)."""

    ADVANCED = "advanced"  # the cursor moved to `through`
    ALREADY = "already"  # `through` is at or below the cursor: a duplicate or late ack, nothing to do
    MISMATCH = "mismatch"  # the cloud's head_hash is not our hash of that record: an alarm, nothing is marked
    WRONG_EPOCH = "wrong_epoch"  # an ack for another epoch (an older database of this gateway)
    BEYOND_HEAD = "beyond_head"  # the cloud claims records we never wrote


def check(conn: sqlite3.Connection, through: int, head_hash: str, acked: int) -> AckOutcome:
    """What an ack through `through` with `head_hash` means against the file, `acked` being the acked point a held
    ack included (writes nothing)."""
    head_seq, _ = store.head(conn)
    if through > head_seq:
        return AckOutcome.BEYOND_HEAD
    row = conn.execute("SELECT hash FROM records WHERE seq=?", (through,)).fetchone()
    if row is not None and row[0] != head_hash:
        return AckOutcome.MISMATCH
    if through <= acked:
        return AckOutcome.ALREADY
    if row is None:  # cannot happen for seq in (acked, head] unless the database was altered
        return AckOutcome.MISMATCH
    return AckOutcome.ADVANCED


def write(conn: sqlite3.Connection, path: Path, through: int, rows: list[tuple[int, int]]) -> None:
    """The acked point and the acks' arrival times (through, at_ms), inside the caller's transaction."""
    if through > store.acked_through(conn, path):
        conn.execute("UPDATE kv SET value=? WHERE key=?", (str(through), K_ACKED))
    if rows:
        conn.executemany("INSERT OR REPLACE INTO acks (through, at_ms) VALUES (?,?)", rows)
        # An ack row is needed while a kept record is at or below its `through`; pruning moves the anchor.
        anchor_seq, _ = retention.anchor(conn, path)
        conn.execute("DELETE FROM acks WHERE through < ?", (anchor_seq,))


def first_at_ms(conn: sqlite3.Connection, seq: int) -> int | None:
    """The arrival time (ms) of the first written ack that covers `seq`, or None (the caller checks that the ledger
    has the `acks` table: one from before ack times were kept has none)."""
    row = conn.execute("SELECT at_ms FROM acks WHERE through >= ? ORDER BY through LIMIT 1", (seq,)).fetchone()
    return None if row is None else int(row[0])


def last(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(through, at_ms) of the latest written ack with a time, or None (the `acks` table checked by the caller)."""
    row = conn.execute("SELECT through, at_ms FROM acks ORDER BY through DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), int(row[1]))
