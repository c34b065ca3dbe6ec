"""The ledger's read-only questions (usage, uses, record rows, energy sums, the prune anchor, the checkpoints,
documents and settings stored beside the records), mixed into `Ledger`.

Each one takes the facade's mutex and hands its connection to the part that knows the SQL (`usage`, `billing`,
`retention`); nothing here writes. Split from the facade, which keeps what changes the file (append, acks,
lending, prune) and the state those share.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

from ..records import USAGE_TYPE
from . import billing, retention, store, usage
from .billing import CycleRow, RecordRow
from .usage import UsageBy, UsageRow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Doc:
    """A versioned document from the cloud (tariff, entitlement, profile), stored beside the records."""

    kind: str
    id: str
    version: int
    body: dict[str, Any]


class Queries:
    """Read-only queries on the facade's connection (`Ledger` supplies the attributes below)."""

    path: Path
    _conn: sqlite3.Connection
    _mutex: threading.RLock
    _cursors: int  # cursors read across mutex releases (`iter_usage`), which a lend or reclaim would break

    def _check_open(self) -> None:
        raise NotImplementedError  # the facade's

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute("SELECT state FROM checkpoints WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row[0])
        return state

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        with self._mutex:
            self._check_open()
            rows = self._conn.execute("SELECT name, state FROM checkpoints ORDER BY name").fetchall()
        return {name: json.loads(state) for name, state in rows}

    def doc(self, kind: str, id: str) -> Doc | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute(
                "SELECT kind, id, version, body FROM docs WHERE kind=? AND id=?", (kind, id)
            ).fetchone()
        return None if row is None else Doc(row[0], row[1], row[2], json.loads(row[3]))

    def docs(self, kind: str) -> list[Doc]:
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(
                "SELECT kind, id, version, body FROM docs WHERE kind=? ORDER BY id", (kind,)
            ).fetchall()
        return [Doc(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def kv_get(self, key: str, default: str | None = None) -> str | None:
        with self._mutex:
            self._check_open()
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def usage_summary(
        self,
        appliance: str | None = None,
        since_wall: float | None = None,
        by: UsageBy = "function",
        tz: tzinfo | None = None,
    ) -> list[UsageRow]:
        """Usage grouped per appliance and function, local day (`tz`, default UTC) or cycle (see `usage`)."""
        return list(self.iter_usage(appliance, since_wall, by, tz))

    def iter_usage(
        self,
        appliance: str | None = None,
        since_wall: float | None = None,
        by: UsageBy = "function",
        tz: tzinfo | None = None,
        from_seq: int | None = None,
    ) -> Iterator[UsageRow]:
        """`usage_summary` row by row, sorted by appliance and key, summed by SQLite as they are read: memory stays
        flat on any ledger (`koto usage --by cycle` on a million records). `from_seq` reads only records from there."""
        usage.check_by(by)
        with self._mutex:
            self._check_open()
            cursor = iter(usage.usage_groups(self._conn, appliance, since_wall, by, tz, from_seq))
            self._cursors += 1  # no lend or reclaim (which closes the connection) until it is read or dropped

        def groups() -> Iterator[tuple[Any, ...]]:
            while True:
                with self._mutex:  # the cursor is read a chunk at a time, each under the lock
                    self._check_open()
                    chunk = list(itertools.islice(cursor, 500))
                if not chunk:
                    return
                yield from chunk

        try:
            yield from usage.fold(groups(), by)
        finally:
            with self._mutex:
                self._cursors -= 1

    def iter_cycles(self, appliance: str | None = None, since_wall: float | None = None) -> Iterator[CycleRow]:
        """Each use (cycle) with its local times, energy, cost, entitlement and sync state (`billing.iter_cycles`)."""
        return self._locked_iter(lambda: billing.iter_cycles(self._conn, self.path, appliance, _ms(since_wall)))

    def iter_record_rows(self, appliance: str | None = None, since_wall: float | None = None) -> Iterator[RecordRow]:
        """Every usage record with its sync state (`billing.iter_records`)."""
        return self._locked_iter(lambda: billing.iter_records(self._conn, self.path, appliance, _ms(since_wall)))

    def appliances(self) -> list[str]:
        """The appliances this ledger holds usage of."""
        with self._mutex:
            self._check_open()
            return billing.appliances(self._conn)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on this ledger's own connection inside its mutex, and return what it returns.

        How a reader in the writing process reads (the status page's figures, Home Assistant's first count): the
        daemon's ledger is its own (`store.connect(exclusive=True)`), so a second connection, even in the same
        process, would find the file locked. `fn` must only read, and be short: an append waits for it (split a
        long pass into ranges, one call each)."""
        with self._mutex:
            self._check_open()
            return fn(self._conn)

    def _locked_iter(self, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        with self._mutex:
            self._check_open()
            yield from make()

    def first_seq_since(self, since_wall: float, *, from_seq: int = 0) -> int | None:
        """The lowest seq (at or after `from_seq`) of a record ending at or after `since_wall`: where a report from
        then on starts reading: from the usage index (a seek per group), else a scan in seq order that stops at the
        first match (records are appended in about time order)."""
        with self._mutex:
            self._check_open()
            found = usage.first_seq_since_indexed(self._conn, round(since_wall * 1000), from_seq)
            if found is not False:  # a seek per group of the usage index, where the ledger has it
                return found if found is None else int(found)
            row = self._conn.execute("SELECT seq FROM records WHERE seq >= ? AND t_end_ms >= ? ORDER BY seq LIMIT 1",
                                     (from_seq, _ms(since_wall))).fetchone()
            return None if row is None else int(row[0])

    def energy_from(self, from_seq: int) -> dict[str, int]:
        """Each appliance's metered energy (its partition records' `energy_mwh`, as `iter_usage` sums it) in the
        records from `from_seq` on, read through the primary key: O(records from there), where `iter_usage` walks
        the whole usage index (74 MB on a million records, a second or more from a cold SD card). For the recent end
        of the ledger (Home Assistant's totals at each start and refresh); for most of it the index is cheaper."""
        marks = ",".join("?" * len(store.PARTITION))
        with self._mutex:
            self._check_open()
            rows = self._conn.execute(
                "SELECT appliance, sum(energy_mwh) FROM records NOT INDEXED "  # the seq range, never the index
                f"WHERE seq>=? AND type=? AND kind IN ({marks}) GROUP BY appliance",
                (from_seq, USAGE_TYPE, *store.PARTITION)).fetchall()
        return {str(a): int(e) for a, e in rows}

    def pruned_totals(self) -> list[retention.PrunedTotal]:
        """What a local-only gateway's pruned records added up to, per appliance, function and currency."""
        with self._mutex:
            self._check_open()
            return retention.pruned_totals(self._conn)

    def anchor(self) -> tuple[int, str]:
        """(first kept seq, its prevhash): where the local chain starts after pruning; (1, zeros) before."""
        with self._mutex:
            self._check_open()
            return retention.anchor(self._conn, self.path)


def _ms(wall: float | None) -> int | None:
    return None if wall is None else round(wall * 1000)

