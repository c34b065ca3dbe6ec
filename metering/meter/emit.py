"""Usage records and lifecycle notes, made from the meter's values: closed slices, finished uses, gaps, register
anomalies. Every record is priced by the policy (if any) as it is made; register sources chain each record's
`register_start_mwh` to the previous record's `register_end_mwh`.
"""

from __future__ import annotations

from koto.clock import Now

from ..energy import JUMP, RESET, SWAP, WRAP, EnergySpec
from ..policy import Policy
from ..records import GapReason, RecordKind, TimeStatus, UsageRecord
from .results import Item, LifecycleNote, watts
from .state import MeterState, Slice, UseTotals

_S = TimeStatus.SYNCED
_U = TimeStatus.UNSYNCED


def _status(start_synced: bool, end_synced: bool) -> TimeStatus:
    """S only when the wall clock was synchronised at both ends."""
    return _S if start_synced and end_synced else _U


class Recorder:
    """Makes the records of one meter into `items` (shared with the meter, which hands them out per step), keeping
    the register chain and each use's totals in `state`."""

    __slots__ = ("_register", "_unit", "appliance", "items", "policy", "source", "state")

    def __init__(self, appliance: str, spec: EnergySpec, policy: Policy | None, state: MeterState,
                 items: list[Item]) -> None:
        self.appliance = appliance
        self.source = spec.source
        self.policy = policy
        self.state = state
        self.items = items
        self._register = spec.kind == "register"
        self._unit = "pulses" if spec.kind == "pulses" else "mwh"

    def slice(self, s: Slice) -> None:
        """A closed slice's record; it counts towards its use, and the use's summary follows if it ends the use.

        A slice of the use under way that begins where (or after) its power fell waits in the tail instead, until
        the use ends there or the power rises again (`flush_tail`)."""
        st = self.state
        fall = st.fall
        if (fall is not None and s.cycle_id and s.cycle_id == st.cycle_id and s.start.boot_id == fall.boot_id
                and s.start.mono_ns >= fall.mono_ns):
            st.tail.append(s)
            return
        rec = UsageRecord(
            kind=s.kind, appliance=self.appliance, source=self.source, function=s.function,
            t_start_mono_ns=s.start.mono_ns, t_end_mono_ns=s.end.mono_ns, t_start_wall=s.start.wall,
            t_end_wall=s.end.wall, boot_id=s.end.boot_id, time_status=_status(s.start.synced, s.end.synced),
            energy_mwh=s.mwh, duration_ms=max(0, s.end.mono_ns - s.start.mono_ns) // 1_000_000,
            cycle_id=s.cycle_id, peak_power_mw=s.peak_mw)
        self._chain(rec)
        self._out(rec)
        if not s.cycle_id:
            return
        uses = self.state.uses
        if s.cycle_id in uses:
            u = uses[s.cycle_id]
            if u is None:
                u = uses[s.cycle_id] = UseTotals(s.start.mono_ns, s.start.wall, s.start.synced, s.end)
            elif u.end.boot_id != s.end.boot_id:
                # The use went on across a reboot. Monotonic stamps of two boots do not compare, so the summary
                # keeps the clock of the boot it ends in (from where the use resumed) and names the first boot.
                u.start_boot = u.start_boot or u.end.boot_id
                u.start_ns = s.start.mono_ns
            u.mwh += s.mwh
            u.duration_ms += rec.duration_ms
            u.peak_mw = max(u.peak_mw, s.peak_mw)
            u.end = s.end
        if s.ends_cycle:
            self.use(s.cycle_id)

    def flush_tail(self, *, out_of_use: bool) -> None:
        """Hand out the tail's records, in order: as the use's (the fall was a pause, or coverage stopped inside it)
        or, once the use has ended where its power fell, as records of no use. The fall is forgotten."""
        st = self.state
        tail, st.tail, st.fall = st.tail, [], None
        for s in tail:
            if out_of_use:
                s.cycle_id = ""
            self.slice(s)

    def use(self, cid: str) -> None:
        """The `cycle` summary of a finished use (none if it never had a record)."""
        u = self.state.uses.pop(cid, None)
        if u is None:
            return
        rec = UsageRecord(
            kind=RecordKind.CYCLE, appliance=self.appliance, source=self.source, function="",
            t_start_mono_ns=u.start_ns, t_end_mono_ns=u.end.mono_ns, t_start_wall=u.start_wall,
            t_end_wall=u.end.wall, boot_id=u.end.boot_id, time_status=_status(u.start_synced, u.end.synced),
            energy_mwh=0, duration_ms=u.duration_ms, cycle_id=cid, uses=1, peak_power_mw=u.peak_mw,
            cycle_energy_mwh=u.mwh)
        if u.start_boot:
            rec.extra["start_boot_id"] = u.start_boot
        self._out(rec)

    def gap(self, start: Now, end: Now, mwh: int, reason: GapReason) -> None:
        """A gap record from `start` to `end`. Across a reboot it has zero monotonic length (the two boots' clocks
        do not compare) and names the boot it began in. (The tail goes out first, as the use's: records of a
        source go out in time order.)"""
        if self.state.tail:
            self.flush_tail(out_of_use=False)
        t0 = start.mono_ns if start.boot_id == end.boot_id else end.mono_ns
        rec = UsageRecord(
            kind=RecordKind.GAP, appliance=self.appliance, source=self.source, function="", t_start_mono_ns=t0,
            t_end_mono_ns=end.mono_ns, t_start_wall=start.wall, t_end_wall=end.wall, boot_id=end.boot_id,
            time_status=_status(start.synced, end.synced), energy_mwh=mwh,
            duration_ms=max(0, end.mono_ns - t0) // 1_000_000, reason=reason)
        if start.boot_id != end.boot_id:
            rec.extra["prev_boot_id"] = start.boot_id
        self._chain(rec)
        self._out(rec)

    def anomaly(self, status: str, at: Now, before: int | None, raw: int, counted: int, offset: int,
                max_mw: int) -> tuple[str, str]:
        """A lifecycle note for a register wrap, reset, swap or implausible jump; returns its event and words."""
        event, words = {
            WRAP: ("register_wrap", f"register wrapped from {before} to {raw}; counted {counted} mWh across the wrap"),
            RESET: ("register_reset", f"register dropped from {before} to {raw}; counted {counted} mWh from zero"),
            SWAP: ("meter_swap", f"meter changed (register {before} -> {raw}); re-based, nothing counted across"),
            JUMP: ("implausible_jump", f"register jumped from {before} to {raw} ({counted} mWh), beyond what "
                   f"{watts(max_mw)} could use; recorded as a gap, billed to no function"),
        }[status]
        self.items.append(LifecycleNote(event, self.source, at, {
            f"raw_before_{self._unit}": "" if before is None else before, f"raw_after_{self._unit}": raw,
            "offset": offset, "counted_mwh": counted, "message": words}))
        return event, words

    def _chain(self, rec: UsageRecord) -> None:
        if self._register:
            a = self.state.authority
            rec.register_start_mwh = a.chain_mwh
            a.chain_mwh += rec.energy_mwh
            rec.register_end_mwh = a.chain_mwh

    def _out(self, rec: UsageRecord) -> None:
        if self.policy is not None:
            self.policy.price(rec)
        self.items.append(rec)
