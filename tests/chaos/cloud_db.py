"""What the reference receiver holds, read beside it while it runs: its SQLite file or its PostgreSQL database.

The faults poll this every 50 ms (the recovery time is "the receiver holds the next record"), so PostgreSQL is read
through one connection kept open (autocommit: every query sees what the receiver committed), opened again if the
server dropped it. Reading goes around `cloud.store` on purpose: a reader must not create the schema or take the
receiver's locks, and these few queries are all the suite needs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from cloud.store import Store, open_store


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


class CloudView:
    """Read-only queries on the receiver's database `db` (a SQLite path or a postgresql:// DSN)."""

    def __init__(self, db: str) -> None:
        self.db = db
        self._pg: Any = None

    def store(self) -> Store:
        """The receiver's own store class on the same database (registration, the end-of-run checks)."""
        return open_store(self.db)

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if not is_postgres(self.db):
            conn = sqlite3.connect(f"file:{Path(self.db)}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        for attempt in (1, 2):
            try:
                if self._pg is None or self._pg.closed:
                    self._pg = psycopg.connect(self.db, autocommit=True, connect_timeout=5)
                return list(self._pg.execute(sql.replace("?", "%s"), params).fetchall())
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def max_seq(self, gateway: str) -> int:
        return int(self._rows("SELECT max(seq) FROM records WHERE gateway = ?", (gateway,))[0][0] or 0)

    def contiguous_through(self, gateway: str) -> int:
        """The highest seq n such that the receiver holds every seq 1..n (one epoch: the chaos gateway keeps one)."""
        seqs = [int(r[0]) for r in self._rows("SELECT seq FROM records WHERE gateway = ? ORDER BY seq", (gateway,))]
        n = 0
        for s in seqs:
            if s != n + 1:
                break
            n = s
        return n

    def records_after(self, gateway: str, seq: int, source: str | None = None) -> int:
        """How many records above `seq` the receiver holds (of `source` only, when given)."""
        rows = self._rows("SELECT body FROM records WHERE gateway = ? AND seq > ?", (gateway, seq))
        if source is None:
            return len(rows)
        return sum(1 for (body,) in rows if json.loads(body)["data"].get("source") == source)

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
