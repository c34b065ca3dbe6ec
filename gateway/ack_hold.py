"""Cloud acks ride with the next records instead of taking a commit of their own (docs/ledger.md, "Write budget").

Every ledger commit costs the SD card about 35 KiB (WAL frames and WAL-index pages) whatever it carries, and the
cloud acks about as often as the gateway commits records, so writing each ack on its own doubled the commits. The
sync hands its acks to `AckHold.mark_acked`: the ledger checks each one at once (hash and all, as before) and counts
it at once for everything the daemon shows (the sync's window, the backlog, status, the STATUS= line), but keeps it
in memory; the next records commit writes it in the same transaction. The daemon's ticker calls `tick()` every
second, which writes an ack in a commit of its own once it has waited ACK_HOLD_S with no records commit to ride
with; `Ledger.close` writes one still held at a clean stop.
"""

from __future__ import annotations

import logging

from koto.clock import Clock
from metering.errors import LedgerError
from metering.ledger import AckOutcome, Ledger

log = logging.getLogger("koto.sync")

ACK_HOLD_S = 3600.0
"""How long (daemon clock) a verified cloud ack may wait in memory for a records commit to write it with.

What a crash (kill -9, power cut) in that time costs: the acked point in the file is older than the cloud's, so at
the next start the gateway resends up to this much of already-acked records. The receiver stores by record id, so
a resend is a no-op there (the contract's "a resend is a no-op"), and acks them again. Nothing is pruned on an ack
that is only held (pruning reads the file), and nothing is lost. Another process (`koto usage`, `koto verify`)
reads the file, so it sees an ack up to this late. An hour: a gateway with any use commits records well within it,
so the ack costs nothing; an idle one pays one small commit an hour at most."""


class AckHold:
    """What `Sync` calls instead of `Ledger.mark_acked`, and the timer that writes a held ack on its own."""

    def __init__(self, ledger: Ledger, clock: Clock, *, hold_s: float = ACK_HOLD_S) -> None:
        self.ledger = ledger
        self.clock = clock
        self.hold_ns = int(hold_s * 1e9)
        self._since_ns: int | None = None  # when the oldest ack not yet written arrived (daemon clock)
        self.written_alone = 0  # acks written in a commit of their own (health, tests)

    def mark_acked(self, epoch: int, through: int, head_hash: str, *, at_wall: float | None = None) -> AckOutcome:
        """`Ledger.mark_acked`, held: verified now, written with the next records commit or by `tick`."""
        fresh = not self.ledger.held_ack()  # none held, or the last one was written with records since
        outcome = self.ledger.mark_acked(epoch, through, head_hash, at_wall=at_wall, hold=True)
        if outcome is AckOutcome.ADVANCED and (fresh or self._since_ns is None):
            self._since_ns = self.clock.now().mono_ns
        return outcome

    def tick(self) -> bool:
        """Write a held ack in a commit of its own when it has waited ACK_HOLD_S. Returns whether it wrote one."""
        if not self.ledger.held_ack():
            self._since_ns = None
            return False
        now = self.clock.now().mono_ns
        if self._since_ns is None:
            self._since_ns = now
        if now - self._since_ns < self.hold_ns:
            return False
        self._since_ns = None
        try:
            wrote = self.ledger.write_ack()
        except LedgerError as e:  # a full card: the appends fail too; try again after another hold
            self._since_ns = now
            log.warning("could not write the cloud's ack (%s); trying again in %.0f s", e, self.hold_ns / 1e9)
            return False
        self.written_alone += wrote
        return wrote
