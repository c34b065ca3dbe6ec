"""Which meter state goes into which ledger transaction: the SD card's write budget is decided here.

Every write to the ledger is an SD-card page program (and, at the card's level, a read-modify-write of an erase
block), so the gateway writes only what a restart cannot recover otherwise:

- **A meter that produced records** has its checkpoint written in the same transaction as those records, always:
  the ledger and the state that produced it never disagree (nothing counted twice after a restart).
- **A register meter** needs one more: its first baseline (the first register value ever read, written with the
  next batch). Beyond that nothing else. Between its records, its state can always be rebuilt from the last
  checkpoint plus the register itself: after a restart the register's delta since that checkpoint is reconciled
  (into the open segment when the gateway is back within `max_gap_s`, else as a `restart` gap), so a crash loses
  no energy, only the attribution of that interval to a function.
- **A pulse (S0) meter** is different: its count lives only in the gateway (the driver resumes from the
  checkpoint's count), and **a power meter** integrates energy that no register holds. Their state is written
  only when it moved (a new pulse count; energy integrated from non-zero power), at the latest `checkpoint_s` of
  the daemon's clock after it first moved, sooner when another batch is written anyway. A crash loses at most that
  window (README, "What a power cut costs").
- **Pricing** state is written with every transaction that writes anything (it moves with the records it priced).
- **Records wait** in memory so that several share one transaction: each costs about ten 1 KiB pages (the records'
  last leaves and index pages, the chain head, the checkpoints), however many
  records it carries. A segment record (function, interim, gap) waits at most `[gateway] hold_s` (3600 s by default;
  0 = every batch); a closed use (its `cycle` record, what a bill counts), a lifecycle or a clock record at most
  `hold_use_s` (60 s), and takes everything held before it along. So a use's segments go into the ledger together
  with its summary, one transaction per use instead of one per function change (bench/sd_writes.py: 136 -> 67
  transactions a day). Holding loses nothing a crash would not: a meter's checkpoint goes in the same transaction
  as its records, so after a crash the register reconciles the interval again (its attribution to functions is
  lost, up to `hold_s`), and a pulse or power meter's held records go with its cadence checkpoint (at most
  `checkpoint_s` later). The cost is latency: a segment reaches the ledger, `koto usage` and the cloud up to
  `hold_s` after it was made, a finished use within `hold_use_s`. A clean stop, and the retry after a failed
  commit, write at once.
- **Idle standby makes few records.** Most records of a day used to be 15-minute interim slices of standby (806 of
  974 in the bench), each a transaction of its own unless held for long. The meter slices a segment outside any
  use every `[[appliance]] idle_interim_s` (6 h by default) instead of every `interim_s` (metering/meter): the
  standby energy is the same, in the next record.

So between billable events an idle gateway writes nothing at all, and a busy S0 meter one small transaction per
`checkpoint_s`. The cadence runs on the daemon's injected clock, so tests and the write-budget bench compress time.
"""

from __future__ import annotations

from metering.meter import ApplianceMeter
from metering.records import PARTITION_KINDS, USAGE_TYPE, Draft


def prompt(draft: Draft) -> bool:
    """Whether a record is written within `hold_use_s` rather than `hold_s`: a closed use (the `cycle` summary, what
    a bill counts), a lifecycle event (start, stop, config, an applied command: the audit trail) or a clock record.
    A function segment, an interim slice or a gap (the partition records) may wait the longer `hold_s`."""
    return draft.type != USAGE_TYPE or draft.data.get("kind") not in PARTITION_KINDS


class CheckpointPlan:
    """Tracks, per meter, whether its checkpoint must go with the next batch (`owe`) or may wait for the cadence
    (`fed`), and answers `take(now_ns)`: the meters whose checkpoints the batch being made must carry."""

    def __init__(self, meters: dict[str, ApplianceMeter], checkpoint_s: float, *, hold_s: float = 0.0,
                 hold_use_s: float | None = None) -> None:
        self._meters = meters
        self._period_ns = int(checkpoint_s * 1e9)
        self._hold_ns = int(hold_s * 1e9)
        self._hold_use_ns = int(min(hold_s, hold_s if hold_use_s is None else hold_use_s) * 1e9)
        self._held_since: int | None = None  # when the oldest held record was made
        self._prompt_since: int | None = None  # when the oldest held record that is written promptly was made
        self._owed: set[str] = set()  # checkpoints that go with the next batch, whenever it is written
        self._force = False  # a batch is written at the next chance even without records
        self._moved: set[str] = set()
        self._written_raw: dict[str, int | None] = {aid: m.last_raw for aid, m in meters.items()}
        self._moved_since: int | None = None  # the first batch that saw moved state not yet written

    def fed(self, aid: str) -> None:
        """A reading reached meter `aid`: note whether its unrecoverable state moved."""
        meter = self._meters[aid]
        if self._written_raw.get(aid) is None and meter.last_raw is not None:
            self._owed.add(aid)  # the first baseline (any kind): without it a crash would lose energy since then
            self._force = True
        elif meter.spec.kind == "pulses":
            if meter.last_raw != self._written_raw.get(aid):
                self._moved.add(aid)
        elif meter.spec.kind == "power" and meter.power_mw > 0:
            self._moved.add(aid)

    def owe(self, aid: str) -> None:
        """Meter `aid` produced records: its checkpoint must be in the same transaction as they are."""
        self._owed.add(aid)

    def owes(self, aid: str) -> bool:
        """Whether meter `aid`'s checkpoint still waits for a batch (pairing's undo waits for it to be written)."""
        return aid in self._owed

    def owe_all(self) -> None:
        """Every meter's checkpoint is written with the next batch, at once (a clean stop; a failed commit)."""
        self._owed.update(self._meters)
        self._force = True

    def due(self, now_ns: int) -> bool:
        """Whether moved pulse/power state has waited `checkpoint_s` for a write.

        Measured from the first batch that saw it move, not from the last write: a meter that starts counting after
        a quiet hour is not written at its first pulse (a commit of its own, with the use's records following a
        few minutes later) but with the next batch within `checkpoint_s`. A crash loses at most `checkpoint_s` of
        its pulses either way."""
        if not self._moved:
            return False
        if self._moved_since is None:
            self._moved_since = now_ns
        return now_ns - self._moved_since >= self._period_ns

    def records_due(self, pending: list[Draft], now_ns: int) -> bool:
        """Whether `pending` must be written now: its oldest record has waited `hold_s`, or its oldest record that
        is written promptly (a closed use, a lifecycle or clock record: `prompt`) has waited `hold_use_s`.

        Called at every batch (`batch_ms`), so a record's wait is measured from the first batch that saw it."""
        if not pending:
            self._held_since = self._prompt_since = None
            return False
        if self._held_since is None:
            self._held_since = now_ns
        if self._prompt_since is None and any(prompt(d) for d in pending):
            self._prompt_since = now_ns
        if self._prompt_since is not None and now_ns - self._prompt_since >= self._hold_use_ns:
            return True
        return now_ns - self._held_since >= self._hold_ns

    def take(self, now_ns: int, *, records: bool) -> list[str] | None:
        """The meters whose checkpoints a batch made now carries, or None when no batch is to be written.

        A batch is written when records are due (`records_due`), checkpoints are owed, or moved state is due. It
        carries the owed meters and every moved one (free when the transaction is paid for anyway), which restarts
        the cadence. (Records held back stay pending and go with this batch when one is written.)"""
        if not (records or self._force or self.due(now_ns)):
            return None
        self._moved_since = None
        self._held_since = self._prompt_since = None
        self._force = False
        names = sorted(self._owed | self._moved)
        self._owed.clear()
        self._moved.clear()
        for aid in names:
            self._written_raw[aid] = self._meters[aid].last_raw
        return names
