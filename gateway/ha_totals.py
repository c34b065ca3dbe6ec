"""Each appliance's lifetime energy, for Home Assistant's `total_increasing` energy sensor: a number that only grows,
across restarts, a replaced ledger and the pruning of old records.

Home Assistant reads any drop of a `total_increasing` sensor as a meter reset and starts a new cycle, so a value
that went down after a restart would show as a spike in its energy dashboard. The total is what Koto metered: the
sum of the appliance's partition records (function, interim and gap: every watt-hour once). The ledger alone
cannot give it for ever — records the cloud has acked leave after `retain_days` — so a small file in the state
folder (`homeassistant-totals.json`) keeps a base: the totals through some seq of some epoch. At each start the
records after that seq are added and the base is moved to the ledger's head (nothing appends during a start) — when
they are few (RECENT_ROWS); when there is no base yet (the first start with Home Assistant on, a new ledger) or it is
far behind, the sum would read the whole usage index (74 MB on a million records, seconds from a cold disk), so
`start` only fixes the seq range to count and `catch_up` counts it later, in a worker thread over its own read-only
connection, while the gateway runs (READY does not wait for it); records appended meanwhile are past that range and
are added by the refreshes as usual, so none is counted twice or missed. Nothing is published before the count is
done, and a stop during it interrupts the count and saves nothing (the next start counts again); while
running, the records after the base are summed again on each refresh, and every 6 hours the base is moved forward
(when no record was appended during the sum — the ledger head did not move — so it is exact), and at a clean stop:
records stay in the ledger at least a day (`retain_days` >= 1), so pruning never takes one the base has not counted.
A few small writes a day, on the SD card's budget. What is not covered: a crash, and then a new ledger — the records
after the base in the old one are not in the new one, and the total steps back to the base (Home Assistant then
counts a meter reset). A ledger with another epoch
(a new one) starts adding from its first record on top of the old totals. A local-only gateway's own pruned totals
count when there is no base yet.

The value published never goes below one published before (`published`), whatever happens to the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from koto.errors import KotoError
from koto.files import write_atomic
from metering.records import PARTITION_KINDS, USAGE_TYPE

log = logging.getLogger("koto.homeassistant")

TOTALS_FILE = "homeassistant-totals.json"
RECENT_ROWS = 50_000  # up to this many records past the base are read from the table, not the whole usage index
REBASE_S = 6 * 3600.0  # records stay at least a day (retain_days >= 1): a base 6 h old is never overtaken
CHECK_STOP_OPS = 20_000  # the background count looks at its stop flag every this many SQLite steps (well under 1 ms)
_PARTITION = tuple(sorted(str(k) for k in PARTITION_KINDS))
# One aggregate over the covering index `records_usage` (type, appliance, kind, ...; the seq is in every entry, so the
# range is checked without a table read; SQLite 3.40 plans it so whatever the range). As cheap as `iter_usage`'s
# per-group sums (the same 281 MB read from a cold disk on a million records, 1.2 s of CPU), but bounded above.
_KINDS = ",".join("?" * len(_PARTITION))
_RANGE_SUM = (f"SELECT appliance, sum(energy_mwh) FROM records WHERE type=? AND kind IN ({_KINDS}) "
              "AND seq BETWEEN ? AND ? GROUP BY appliance")


class CountStopped(KotoError):
    """The background count was stopped (the gateway is stopping): nothing was added, nothing saved."""


def energy_between(db: Path, first: int, last: int, stop: threading.Event) -> dict[str, int]:
    """Each appliance's metered energy (partition records' `energy_mwh`) in the records `first`..`last`, over a
    read-only connection of its own (a worker thread's: the gateway's connection and its lock stay free for the
    appends). Raises CountStopped as soon as `stop` is set, even mid-query (SQLite's progress handler)."""
    if stop.is_set():
        raise CountStopped
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.set_progress_handler(stop.is_set, CHECK_STOP_OPS)  # a true return aborts the statement
        rows = conn.execute(_RANGE_SUM, (USAGE_TYPE, *_PARTITION, first, last)).fetchall()
    except sqlite3.OperationalError as e:
        if stop.is_set():
            raise CountStopped from e
        raise
    finally:
        conn.close()
    return {str(a): int(e) for a, e in rows}


class _Ledger(Protocol):
    epoch: int
    path: Path

    def head(self) -> tuple[int, str]: ...
    def iter_usage(self, appliance: str | None = None, since_wall: float | None = None, by: Any = "function",
                   tz: Any = None, from_seq: int | None = None) -> Iterable[Any]: ...
    def pruned_totals(self) -> list[Any]: ...
    def energy_from(self, from_seq: int) -> dict[str, int]: ...


class EnergyTotals:
    """Lifetime mWh per appliance. `start(ledger)` once before the gateway appends; then, if `pending`,
    `catch_up(stop)` once from a worker thread; `refresh(ledger)` from a worker thread; `published` is what may be
    shown (nothing while `pending`)."""

    def __init__(self, folder: Path, *, rebase_s: float = REBASE_S, clock: Any = time.monotonic) -> None:
        self.path = folder / TOTALS_FILE
        self.rebase_s = rebase_s
        self._clock = clock
        self.epoch = 0
        self.through = 0  # the base counts the records up to this seq of `epoch`
        self.base: dict[str, int] = {}
        self.published: dict[str, int] = {}
        self._rebased_at = 0.0
        self._failing = False
        self._db: Path | None = None
        self._range: tuple[int, int] | None = None  # the seqs catch_up counts, fixed at the start
        self._lock = threading.Lock()  # a refresh in a worker thread and the last one at a stop may overlap

    def _load(self) -> bool:
        try:
            doc = json.loads(self.path.read_text())
            self.epoch, self.through = int(doc["epoch"]), int(doc["through_seq"])
            self.base = {str(k): int(v) for k, v in doc["mwh"].items()}
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s cannot be read (%s); Home Assistant's energy totals start again from the ledger",
                        self.path, e)
            return False
        return True

    def _sum(self, ledger: _Ledger, from_seq: int) -> dict[str, int]:
        """The energy per appliance in the records from `from_seq` on: through the primary key when they are the
        recent end of the ledger (each start after the first, each refresh: the base is at most REBASE_S old), so a
        start reads what came since the base, not the whole usage index; through the index otherwise."""
        if ledger.head()[0] - from_seq < RECENT_ROWS:
            return ledger.energy_from(from_seq)
        out: dict[str, int] = {}
        for row in ledger.iter_usage(None, None, "function", None, from_seq):
            out[row.appliance] = out.get(row.appliance, 0) + row.energy_mwh
        return out

    def start(self, ledger: _Ledger) -> dict[str, int]:
        """Load the base and add what the ledger holds beyond it, when that is little (a restart), and save the new
        base; else fix the range to count (`pending`, for `catch_up`). Call before the gateway appends."""
        had = self._load()
        if had and self.epoch != ledger.epoch:
            log.info("Home Assistant energy totals: a new ledger (epoch %d, was %d); its records add to the totals",
                     ledger.epoch, self.epoch)
            self.epoch, self.through = ledger.epoch, 0
            had = False
        elif not had:
            self.epoch, self.through, self.base = ledger.epoch, 0, {}
            for t in ledger.pruned_totals():  # a local-only gateway folds what it prunes into these
                self.base[t.appliance] = self.base.get(t.appliance, 0) + t.energy_mwh
        head = ledger.head()[0]
        if not had or head - self.through >= RECENT_ROWS:
            self._db, self._range = ledger.path, (self.through + 1, head)
            log.info("Home Assistant energy totals: counting the ledger's records %d to %d in the background; the "
                     "energy sensors are updated when that is done", self.through + 1, head)
            return {}
        self._add(self._sum(ledger, self.through + 1))
        self.through = head
        self._save()
        self.published = dict(self.base)
        return self.published

    @property
    def pending(self) -> bool:
        """The start left a count to `catch_up`: the totals are not known yet."""
        return self._range is not None

    def catch_up(self, stop: threading.Event) -> dict[str, int]:
        """Blocking (a worker thread): count the records the start left (`energy_between`, its own connection), add
        them to the base, which then counts through the ledger's head at the start, and save it. Raises CountStopped
        when `stop` is set first (nothing changed)."""
        if self._range is None or self._db is None:
            return dict(self.published)
        first, last = self._range
        t0 = time.monotonic()
        more = energy_between(self._db, first, last, stop) if last >= first else {}
        with self._lock:
            self._add(more)
            self.through, self._range = last, None
            self._save()
            for a, e in self.base.items():
                self.published[a] = max(self.published.get(a, 0), e)
        log.info("Home Assistant energy totals: %d records counted in %.1f s", max(0, last - first + 1),
                 time.monotonic() - t0)
        return dict(self.published)

    def _add(self, more: dict[str, int]) -> None:
        for a, e in more.items():
            self.base[a] = self.base.get(a, 0) + e

    def refresh(self, ledger: _Ledger, *, save: bool = False) -> dict[str, int]:
        """The totals now (blocking: reads the ledger). Never below what was published before. `save`: move the
        base now (at a clean stop, when nothing appends any more). While `pending`, only what was published (the
        records past the base are `catch_up`'s to count)."""
        with self._lock:
            if self._range is not None:
                return dict(self.published)
            return self._refresh(ledger, save)

    def _refresh(self, ledger: _Ledger, save: bool) -> dict[str, int]:
        before = ledger.head()[0]
        more = self._sum(ledger, self.through + 1) if before > self.through else {}
        after = ledger.head()[0]
        now = {a: self.base.get(a, 0) + more.get(a, 0) for a in {*self.base, *more}}
        due = save or self._clock() - self._rebased_at >= self.rebase_s
        if before == after and before > self.through and due:
            self.base, self.through = now, after  # exact: nothing was appended during the sum
            self._save()
        for a, e in now.items():
            self.published[a] = max(self.published.get(a, 0), e)
        return dict(self.published)

    def _save(self) -> None:
        doc = {"epoch": self.epoch, "through_seq": self.through, "mwh": dict(sorted(self.base.items()))}
        try:
            write_atomic(self.path, json.dumps(doc, sort_keys=True).encode(), mode=0o600)
        except OSError as e:
            if not self._failing:
                log.warning("cannot save %s (%s); Home Assistant's energy totals are still right while the "
                            "gateway runs, and recounted from the ledger at the next start", self.path, e.strerror)
            self._failing = True
            return
        self._failing = False
        self._rebased_at = self._clock()
