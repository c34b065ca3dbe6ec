"""Bounded storage: the daemon prunes records older than `[gateway] retain_days`, at a quiet moment, in small steps.

Rules (docs/ledger.md, "Retention"):
- **With a cloud**, only acked records leave (the cloud holds them), never the chain head; `koto verify` proves what
  remains from the anchor the prune leaves.
- **Without a cloud** (local-only) no ack will ever come, so records leave by age alone: before they are deleted,
  in the same transaction, their energy, time, uses and cost are added to running per-appliance, per-function
  totals kept in the ledger (`Ledger.pruned_totals`). The gateway keeps `retain_days` of records, and the totals of
  everything since its first start.
- **A quiet moment**: no use (cycle) running on any appliance, no records waiting in memory, and with a cloud no
  backlog being drained (records unacked while the ack moved since the last look). Otherwise the housekeeper looks
  again a minute later.
- **Small steps**: at most `STEP_ROWS` records per transaction, each in a worker thread; the meter loop's appends
  wait for the ledger's lock for one step at most.
- **A bounded WAL**: after a prune that deleted anything, `wal_checkpoint(TRUNCATE)` folds the WAL into the database
  and truncates it; freed pages are reused by new records, so the file stops growing once retention is reached.
  It never waits for a reader (a `koto usage` holding a snapshot): it folds what it can and the next one does the rest.

Waits run on the daemon's clock (`clock.factor`), so a compressed run prunes on its own compressed schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from koto.clock import Clock
from metering.errors import LedgerError
from metering.ledger import Ledger, UsageRow

log = logging.getLogger("koto.gateway.housekeeping")

STEP_ROWS = 500  # records per prune transaction: a few ms of work on a Pi, one WAL frame set of a few pages
# How often retention is applied: a day's records leave within a day after they are due. Daily, not hourly: each
# prune and the WAL truncation after it rewrite hundreds of KB (docs/ledger.md, "pruning in steady state"), which
# hourly was several times a day's commits.
EVERY_S = 86400.0
RETRY_S = 60.0  # when the moment was not quiet, look again this much later


class Housekeeper:
    """Applies retention to `ledger`. `quiet()` says whether now is a quiet moment (see the module docstring)."""

    def __init__(self, ledger: Ledger, clock: Clock, *, retain_days: float, local_only: bool,
                 quiet: Callable[[], bool], step_rows: int = STEP_ROWS) -> None:
        self.ledger = ledger
        self.clock = clock
        self.retain_days = retain_days
        self.local_only = local_only
        self.quiet = quiet
        self.step_rows = step_rows
        self.pruned = 0  # records deleted since the start
        self._last_acked: int | None = None

    def is_quiet(self) -> bool:
        """The caller's quiet moment, and with a cloud no backlog being drained: records unacked while the cloud's
        ack moved since the last look (during an outage nothing drains, and acked records may leave)."""
        if not self.quiet():
            return False
        if self.local_only:
            return True
        acked = self.ledger.acked_through()
        draining = self.ledger.unacked_count() > 0 and acked != self._last_acked
        self._last_acked = acked
        return not draining

    async def run(self) -> None:
        """Apply retention every `EVERY_S` of the daemon's clock, at the first quiet moment."""
        wait = RETRY_S
        while True:
            await asyncio.sleep(wait / self.clock.factor)
            if not self.is_quiet():
                wait = RETRY_S
                continue
            try:
                await self.prune_now()
            except LedgerError as e:  # e.g. a full card: the prune rolled back; try again next time
                log.warning("retention: %s", e)
            wait = EVERY_S

    async def prune_now(self) -> int:
        """Prune what retention allows now, step by step while the moment stays quiet; truncate the WAL after.
        Returns the number of records deleted."""
        now = self.clock.now()
        deleted = 0
        while self.is_quiet():
            n = await asyncio.to_thread(self.ledger.prune, self.retain_days, now.wall, max_rows=self.step_rows,
                                        local_only=self.local_only)
            deleted += n
            if n < self.step_rows:
                break
            await asyncio.sleep(0)  # between steps the meter loop's appends go first
        if deleted:
            if not await asyncio.to_thread(self.ledger.wal_checkpoint):
                log.info("retention: a reader (koto usage, verify, the status page) was busy, so the WAL is left "
                         "to the next checkpoint")
            self.pruned += deleted
            first, _ = self.ledger.anchor()
            rule = "folded into the running totals" if self.local_only else "acked by the cloud"
            log.info("retention: removed %d records older than %g days (%s); the ledger now starts at seq %d",
                     deleted, self.retain_days, rule, first)
        return deleted


def pruned_rows(ledger: Ledger, appliance: str | None = None) -> list[UsageRow]:
    """A local-only gateway's pruned totals as `koto usage` rows (per appliance and function, costs per currency)."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for t in ledger.pruned_totals():
        if appliance is not None and t.appliance != appliance:
            continue
        old = rows.get((t.appliance, t.key)) or UsageRow(t.appliance, t.key, 0, 0, 0, (), 0)
        costs = dict(old.costs)
        if t.currency:
            costs[t.currency] = costs.get(t.currency, 0) + t.cost_minor
        rows[(t.appliance, t.key)] = UsageRow(t.appliance, t.key, old.energy_mwh + t.energy_mwh,
                                              old.duration_ms + t.duration_ms, old.uses + t.uses,
                                              tuple(sorted(costs.items())), old.records + t.records)
    return [rows[k] for k in sorted(rows)]
