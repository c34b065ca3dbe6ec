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
`start` only fixes the seq range to count and `catch_up` counts it later, in a worker thread, while the gateway runs
(READY does not wait for it): on the daemon's own ledger connection (`Ledger.read`; the daemon owns its ledger, no
second connection can open it), in chunks of CHUNK_ROWS records in seq order, so an append waits for one chunk at
most. Records appended meanwhile are past that range and are added by the refreshes as usual, so none is counted
twice or missed; a prune between two chunks is seen and handled (`catch_up`). Nothing is published before the count
is done, and a stop during it ends the count at the next chunk and saves nothing (the next start counts again); while
running, the records after the base are summed again on each refresh, and every 6 hours the base is moved forward
(when no record was appended during the sum — the ledger head did not move — so it is exact), and at a clean stop:
records stay in the ledger at least a day (`retain_days` >= 1), so pruning never takes one the base has not counted.
A few small writes a day, on the SD card's budget. What is not covered: a crash, and then a new ledger — the records
after the base in the old one are not in the new one, and the total steps back to the base (Home Assistant then
counts a meter reset); nor records pruned while Home Assistant was off for longer than `retain_days` (the base
was not moved meanwhile): the start then goes to `catch_up`, which says which records it leaves out. A ledger with
another epoch (a new one) starts adding from its first record on top of the old totals. A local-only gateway's own
pruned totals count when there is no base yet.

The value published never goes below one published before (`published`), whatever happens to the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from koto.errors import KotoError
from koto.files import write_atomic
from metering.ledger import retention
from metering.records import PARTITION_KINDS, USAGE_TYPE

log = logging.getLogger("koto.homeassistant")

T = TypeVar("T")

TOTALS_FILE = "homeassistant-totals.json"
RECENT_ROWS = 50_000  # up to this many records past the base are read from the table, not the whole usage index
REBASE_S = 6 * 3600.0  # records stay at least a day (retain_days >= 1): a base 6 h old is never overtaken
# The first count reads this many records per `Ledger.read` call (the daemon's appends wait for one call at most):
# 96 ms at most, 0.90 s for the whole million-record ledger out of the page cache, 24 ms and 0.46 s in it
# (bench/ledger_reads.py, docs/performance.md); several times that on a Pi's SD card, still one chunk at a time.
CHUNK_ROWS = 50_000
_PARTITION = tuple(sorted(str(k) for k in PARTITION_KINDS))
# One aggregate over a seq range, read through the primary key (`NOT INDEXED`: the usage index has the seq last, so
# SQLite would walk all of its 74 MB for each range). Only each row's first columns are read, not its body.
_KINDS = ",".join("?" * len(_PARTITION))
_RANGE_SUM = ("SELECT appliance, sum(energy_mwh) FROM records NOT INDEXED WHERE seq>=? AND seq<=? AND type=? "
              f"AND kind IN ({_KINDS}) GROUP BY appliance")


class CountStopped(KotoError):
    """The background count was stopped (the gateway is stopping): nothing was added, nothing saved."""


def _pruned(conn: sqlite3.Connection) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in retention.pruned_totals(conn):
        out[t.appliance] = out.get(t.appliance, 0) + t.energy_mwh
    return out


def count_range(path: Path, first: int, last: int) -> Callable[[sqlite3.Connection], tuple[int, dict[str, int] | None]]:
    """For `Ledger.read`: (the ledger's first seq, each appliance's energy in the records `first`..`last`), or
    (first seq, None) when that is past `first`: records not counted yet were pruned (then nothing is summed)."""
    def read(conn: sqlite3.Connection) -> tuple[int, dict[str, int] | None]:
        anchor = retention.anchor(conn, path)[0]
        if anchor > first:
            return anchor, None
        rows = conn.execute(_RANGE_SUM, (first, last, USAGE_TYPE, *_PARTITION)).fetchall()
        return anchor, {str(a): int(e) for a, e in rows}
    return read


class _Ledger(Protocol):
    epoch: int
    path: Path

    def head(self) -> tuple[int, str]: ...
    def iter_usage(self, appliance: str | None = None, since_wall: float | None = None, by: Any = "function",
                   tz: Any = None, from_seq: int | None = None) -> Iterable[Any]: ...
    def pruned_totals(self) -> list[Any]: ...
    def energy_from(self, from_seq: int) -> dict[str, int]: ...
    def anchor(self) -> tuple[int, str]: ...
    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


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
        self._ledger: _Ledger | None = None  # the daemon's ledger, which catch_up reads (on its own connection)
        self._range: tuple[int, int] | None = None  # the seqs catch_up counts, fixed at the start
        self._anchor = 1  # the ledger's first seq at the start
        self._pruned: dict[str, int] | None = None  # the pruned totals the base began from (None: a saved base)
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
            self._pruned = {}
            for t in ledger.pruned_totals():  # a local-only gateway folds what it prunes into these
                self.base[t.appliance] = self.base.get(t.appliance, 0) + t.energy_mwh
                self._pruned[t.appliance] = self._pruned.get(t.appliance, 0) + t.energy_mwh
        head, anchor = ledger.head()[0], ledger.anchor()[0]
        # A saved base whose next records were pruned meanwhile (Home Assistant was off for longer than
        # `retain_days`) goes the long way too: `catch_up` says which records the totals leave out.
        if not had or head - self.through >= RECENT_ROWS or anchor > self.through + 1:
            self._ledger, self._range, self._anchor = ledger, (self.through + 1, head), anchor
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
        """Blocking (a worker thread): count the records the start left, CHUNK_ROWS at a time in seq order, each
        chunk one `Ledger.read` call on the daemon's own connection (an append waits for one chunk at most); add
        them to the base, which then counts through the ledger's head at the start, and save it. Raises
        CountStopped when `stop` is set first, looked at between chunks (nothing changed).

        Each chunk also reads the ledger's first seq (the prune anchor), in the same call. A prune deletes only a
        prefix, so one that deleted counted records only changes nothing; one that reached records not counted yet
        is seen (the anchor is past the next seq to count) before they are missed, and the count starts again from
        the anchor: with a base that began from the ledger's pruned totals (no base file), from the pruned totals
        as they are now, which a local-only gateway's prune folds the deleted records into — so the totals are
        exact again (for a gateway with a cloud, they are then the ledger's energy as it is now, as a first start
        now would count it). A saved base cannot be split that way: the records pruned before they were counted
        are said in the journal and left out."""
        ledger = self._ledger
        if self._range is None or ledger is None:
            return dict(self.published)
        first, last = self._range
        t0 = time.monotonic()
        base, pruned = dict(self.base), self._pruned
        counted: dict[str, int] = {}
        seq = max(first, self._anchor)
        if seq > first and pruned is None:
            log.warning("Home Assistant energy totals: records %d to %d were pruned before they were counted; the "
                        "totals leave them out", first, seq - 1)
        chunks = 0
        while seq <= last:
            if stop.is_set():
                raise CountStopped
            end = min(last, seq + CHUNK_ROWS - 1)
            anchor, sums = ledger.read(count_range(ledger.path, seq, end))
            chunks += 1
            if sums is not None:
                for a, e in sums.items():
                    counted[a] = counted.get(a, 0) + e
                seq = end + 1
                continue
            if pruned is not None:  # start again from the anchor, on the pruned totals of now
                now = ledger.read(_pruned)
                base = {a: base.get(a, 0) - pruned.get(a, 0) + now.get(a, 0) for a in {*base, *now}}
                pruned, counted = now, {}
                log.info("Home Assistant energy totals: a prune reached records not counted yet; counting again "
                         "from seq %d", anchor)
            else:
                log.warning("Home Assistant energy totals: records %d to %d were pruned before they were counted; "
                            "the totals leave them out", seq, anchor - 1)
            seq = anchor
        with self._lock:
            self.base = base
            self._add(counted)
            self.through, self._range, self._ledger = last, None, None
            self._save()
            for a, e in self.base.items():
                self.published[a] = max(self.published.get(a, 0), e)
        log.info("Home Assistant energy totals: %d records counted in %.1f s (%d reads of the ledger)",
                 max(0, last - first + 1), time.monotonic() - t0, chunks)
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
