"""The daemon owns its ledger and lends it to readers in other processes (docs/ledger.md, "The daemon owns its ledger;
readers borrow it").

The daemon opens its ledger with SQLite's exclusive locking mode: no `-shm` file is written, which was ~40 % of the
bytes the gateway wrote to its SD card (issue 10). A reader in another process (`koto usage`, `koto verify`,
`koto doctor`, a support bundle) takes a shared lease on `<db>.readers` and waits; this task sees the lease within a
second and lends the file (normal locking mode) until the last reader is gone, then takes it back.

A lend or a reclaim closes and reopens the connection, which folds the WAL into the database: it runs in a worker
thread, off the event loop. The look each second that finds nothing to do (no lease, not lent) is one flock test on
the loop, not a worker thread woken every second (a few per cent of an 8-meter daemon's CPU: docs/ledger.md). The
ledger's path no longer naming our file (`LedgerGone`) ends the gateway as a failed commit would; any other error
(the reopen failed) is said once and tried again each second, while the meter loop keeps the records in memory as
on a full disk.
"""

from __future__ import annotations

import asyncio
import logging

from metering.errors import LedgerError, LedgerGone
from metering.ledger import Ledger

log = logging.getLogger("koto.gateway")

EVERY_S = 1.0  # real seconds, whatever the daemon's clock: the readers are people and tools waiting (up to 10 s)


async def lend_to_readers(ledger: Ledger, every_s: float = EVERY_S) -> None:
    """Lend the ledger while readers hold a lease, take it back when they are gone; until cancelled."""
    failing = refusing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            if not ledger.serve_due():  # nearly always: one flock test here, no worker thread woken
                continue
            said = await asyncio.to_thread(ledger.serve_readers)
        except LedgerGone:
            raise  # the supervisor stops the gateway with one line
        except LedgerError as e:
            if not failing:
                log.error("ledger: could not reopen it for a reader (%s); trying again every second", e)
                failing = True
            continue
        if failing:
            log.warning("ledger: reopened; readers can borrow it again")
            failing = False
        if said == "refused":
            if not refusing:
                log.error("ledger: could not lend it to a reader (%s; a full disk refuses the shared file SQLite "
                          "needs); the gateway keeps it and tries again, the reader waits", ledger.lend_refused)
                refusing = True
            continue
        refusing = False
        if said == "lent":
            log.info("ledger: lent to a reader in another process (koto usage, verify, doctor or a support "
                     "bundle); records are still written")
        elif said == "reclaimed":
            log.info("ledger: the readers are done; the gateway holds its ledger alone again")
