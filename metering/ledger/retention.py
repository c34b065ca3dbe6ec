"""What leaves the ledger and when: pruning acked records past retention, the anchor it leaves, WAL checkpoints.

Nothing leaves before the cloud has it: `prune` deletes only a prefix of acked records that ended before the
retention cut-off, never the chain head (the next record links to it), and records the first kept seq and its
prevhash as the anchor `verify` starts from. A gateway without a cloud (no ack will ever come) prunes by age alone
and first folds what it deletes into running per-appliance, per-function totals kept in the ledger (`K_PRUNED`),
in the same transaction. The caller (the `Ledger` facade) holds its lock around these.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import astuple, dataclass
from pathlib import Path

from ..errors import LedgerError
from ..records import USAGE_TYPE
from .envelope import CYCLE
from .store import K_ANCHOR_PREV, K_ANCHOR_SEQ, K_PRUNED, PARTITION, acked_through, head, kv_required, transaction
from .usage import _FUNCTION_KEY, _SUMS


@dataclass(frozen=True, slots=True)
class PrunedTotal:
    """What pruned records of one appliance, function (or gap reason) and currency added up to."""

    appliance: str
    key: str
    currency: str
    energy_mwh: int
    duration_ms: int
    uses: int
    cost_minor: int
    records: int


def prune(conn: sqlite3.Connection, path: Path, retain_days: float, now_wall: float, *, max_rows: int | None = None,
          local_only: bool = False) -> int:
    """Delete records that ended more than `retain_days` before `now_wall`, oldest first, as a prefix, in one
    transaction of at most `max_rows` records (a caller prunes a large backlog in small steps, so a writer never
    waits long for the lock). Only acked records, unless `local_only`: a gateway without a cloud, where no ack ever
    comes; its pruned records are first folded into the running totals (`pruned_totals`). Returns how many left."""
    cutoff_ms = round((now_wall - retain_days * 86400) * 1000)
    deleted = 0
    with transaction(conn, path, "prune failed, nothing was deleted"):
        head_seq, _ = head(conn)
        limit = head_seq - 1 if local_only else min(acked_through(conn, path), head_seq - 1)
        first = int(kv_required(conn, path, K_ANCHOR_SEQ))
        # The prefix ends before the first record in range that is still within retention.
        row = conn.execute(
            "SELECT min(seq) FROM records WHERE seq>=? AND seq<=? AND t_end_ms>=?", (first, limit, cutoff_ms)
        ).fetchone()
        last = (row[0] - 1) if row[0] is not None else limit
        if max_rows is not None:
            last = min(last, first + max_rows - 1)  # seqs are contiguous from the anchor
        if last >= first:
            h = conn.execute("SELECT hash FROM records WHERE seq=?", (last,)).fetchone()
            if h is None:
                raise LedgerError(f"{path}: seq {last} is missing; run `koto verify`")
            if local_only:
                _fold_totals(conn, path, first, last)
            deleted = conn.execute("DELETE FROM records WHERE seq<=?", (last,)).rowcount
            conn.executemany(
                "UPDATE kv SET value=? WHERE key=?", ((str(last + 1), K_ANCHOR_SEQ), (str(h[0]), K_ANCHOR_PREV))
            )
    return int(deleted)


def _fold_totals(conn: sqlite3.Connection, path: Path, first: int, last: int) -> None:
    """Add the usage of records `first..last` to the running totals, in the prune's transaction: a local-only
    gateway's `koto usage` since the beginning stays answerable after its records are gone."""
    totals = {(t.appliance, t.key, t.currency): t for t in pruned_totals(conn)}
    sql = (f"SELECT appliance, {_FUNCTION_KEY} AS k, {_SUMS} FROM records WHERE type=? AND seq>=? AND seq<=? "
           "GROUP BY appliance, k, currency")
    for app, key, e, dur, uses, cur, cost, n in conn.execute(sql, (*PARTITION, *PARTITION, CYCLE, USAGE_TYPE,
                                                                    first, last)):
        old = totals.get((app, key, cur)) or PrunedTotal(app, key, cur, 0, 0, 0, 0, 0)
        totals[(app, key, cur)] = PrunedTotal(app, key, cur, old.energy_mwh + e, old.duration_ms + dur,
                                              old.uses + uses, old.cost_minor + cost, old.records + n)
    doc = {"through_seq": last, "totals": [list(astuple(t)) for _, t in sorted(totals.items())]}
    conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?,?)",
                 (K_PRUNED, json.dumps(doc, sort_keys=True, separators=(",", ":"))))


def pruned_totals(conn: sqlite3.Connection) -> list[PrunedTotal]:
    """The running totals of the records a local-only gateway pruned (empty when it never did)."""
    row = conn.execute("SELECT value FROM kv WHERE key=?", (K_PRUNED,)).fetchone()
    if row is None:
        return []
    return [PrunedTotal(*t) for t in json.loads(row[0])["totals"]]


def anchor(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """(first kept seq, its prevhash): where the local chain starts after pruning; (1, zeros) before."""
    return int(kv_required(conn, path, K_ANCHOR_SEQ)), kv_required(conn, path, K_ANCHOR_PREV)


def wal_checkpoint(conn: sqlite3.Connection, path: Path) -> bool:
    """Fold the WAL into the database and truncate it (call when idle so the WAL does not grow); False when a
    reader's snapshot kept part of it (then as much as can be is folded, and the next checkpoint does the rest).

    It does not wait for readers: a TRUNCATE checkpoint waits for them through the busy handler (the ledger's 10 s
    `busy_timeout`), and the caller holds the ledger's lock meanwhile, so a `koto usage` or Home Assistant's first
    count reading a big ledger would stall the daemon's appends for up to 10 s."""
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    try:
        conn.execute("PRAGMA busy_timeout=0")
        try:
            (blocked, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(timeout)}")
    except sqlite3.Error as e:
        raise LedgerError(f"{path}: WAL checkpoint failed ({e})") from e
    return not blocked
