"""Energy accounting in integers: one set of rules for registers, pulses and integrated power.

Units. Power is mW, time is ns, energy is mWh; 1 mWh = 3.6e12 mW·ns (`MW_NS_PER_MWH`).

(a) **Register** (`kind="register"`): a cumulative ENERGY_MWH counter. The register is the authority for totals.
(b) **Pulses** (`kind="pulses"`): a cumulative pulse count. Energy is always derived from the *cumulative* count,
    `mwh(n) = n * 1_000_000 // imp_per_kwh`, and each delta is `mwh(n1) - mwh(n0)`: the sub-mWh remainder is carried
    implicitly in the count, so the total is exact in pulses and never drifts.
(c) **Power** (`kind="power"`): POWER_MW samples integrated by the **left rectangle** rule — a sample's power holds
    until the next sample (what a sampling meter actually knows; it also makes a function switch at a sample time
    attribute the interval before it to the function that was running). The integral is kept as a running
    remainder in mW·ns below one mWh; whole mWh are handed to the open segment as they complete, so the sum of all
    segments equals `floor(total integral / 3.6e12)` exactly. An interval longer than `max_gap_s` is not integrated:
    the meter writes a `gap` record for it instead.

Attribution. With a register or pulses, power samples (or, without them, time) only *attribute*: each authority
delta is split over the segments since the previous authority reading by `split_largest_remainder`, in proportion
to their integrated power (mW·ns); the remainder goes by largest remainder, ties to the latest segment. With no
power at all in the interval, the split is by duration; with no duration either, all goes to the latest segment.

Settling (registers with power samples). A register shows energy late: it steps by a whole float32 step (~1 Wh at
12,000 kWh) and many meters update it after their power reading, so the last steps of a function can arrive after
it ended. A closed slice therefore waits — its window's register deltas are summed, not split — until the register
has shown all the energy the power samples saw in the window (to the mWh), or `settle_s` after the first waiting
slice closed; then the sum is split as above, over the waiting slices and the open segment. The register stays the
authority for the total (every mWh is split, none made up); the power says where it went. See docs/metering.md.

Register anomalies (`Authority.observe`), all reported as lifecycle notes, never as a negative or giant delta:
- **wrap**: the value drops and `value + wrap - last` is plausible (with `wrap_mwh` / `wrap_pulses` set): the delta
  is that sum;
- **reset**: the value drops to something that is itself plausible as energy since the drop: counted from zero;
- **swap**: the value drops to an implausible value, or the meter's identity changed: re-based, delta 0;
- **dip** (registers): a drop that is not a wrap is first *held*, not believed (`DIP`, delta 0, no state change):
  one lower reading may be a replayed BTHome advert or a glitched reply that passed its CRC, and believing it at once
  made the return to the true series an implausible jump that counted the dip's depth twice. The next reading
  decides: back on the old series (at or above the last value, within the plausible bound) and the dip is
  forgotten; at or a plausible step above the held value and it was a reset or a swap from the held value, noted
  then (`rebase_raw` is where the register went); lower still and that becomes the held value. The held value is
  checkpointed with the register's state, so a restart between the two readings decides the same.
- **implausible jump**: a rise beyond `max_power * elapsed * 2 + step` (step: `step_mwh`, or for a register one
  float32 step at its value if that is more): the delta goes to a `gap` record.
The meter keeps its register fields in one *continuous* scale (`cont`): the raw value plus an offset that moves
only at a wrap, reset or swap (the lifecycle note gives raw before/after and the new offset), so every record's
`register_end_mwh - register_start_mwh == energy_mwh` and the chain never breaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MW_NS_PER_MWH = 3_600_000_000_000
PLAUSIBLE_FACTOR = 2  # a register may rise at most this many times max power over the elapsed time (+ one step)

Kind = Literal["register", "pulses", "power"]


@dataclass(frozen=True, slots=True)
class EnergySpec:
    """Where an appliance's energy comes from.

    `step_mwh` is the register's resolution slack for the plausibility test (an SDM120's float32 kWh steps by
    ~8 Wh at 100,000 kWh); for pulses one pulse is added instead.
    """

    kind: Kind
    source: str
    imp_per_kwh: int = 1000
    max_gap_s: float = 300.0
    wrap_mwh: int = 0  # 0: the register never wraps (e.g. 2**32 for a 32-bit mWh counter)
    wrap_pulses: int = 0
    step_mwh: int = 10_000
    channel: str = ""  # which of the source's channels (Reading.signal) carries the appliance: "" = the total
    settle_s: float = 60.0  # register: how long a closed slice may wait for late register steps (docs/metering.md)

    def __post_init__(self) -> None:
        if self.kind not in ("register", "pulses", "power"):
            raise ValueError(f"energy kind must be register, pulses or power, not {self.kind!r}")
        if self.imp_per_kwh <= 0:
            raise ValueError(f"imp_per_kwh must be > 0, not {self.imp_per_kwh!r}")
        if not self.settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0, not {self.settle_s!r}")
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, not {self.max_gap_s!r}")


def pulses_to_mwh(pulses: int, imp_per_kwh: int) -> int:
    """Cumulative energy of a cumulative pulse count, floored: 1 kWh = 1,000,000 mWh = imp_per_kwh pulses."""
    return pulses * 1_000_000 // imp_per_kwh


def float32_step_mwh(mwh: int) -> int:
    """One step of a float32 kWh register holding `mwh` (rounded up to whole mWh): a register cannot move by less,
    so a rise of one step is always plausible — 977 mWh at 12,346 kWh, 15,625 mWh from 131,072 kWh, 1 kWh from
    8,388,608 kWh (issue 9: a kettle's single step at 131,072 kWh was once taken for an implausible jump)."""
    if mwh <= 0:
        return 1
    e = math.frexp(mwh / 1_000_000)[1]  # kWh = m * 2**e, 0.5 <= m < 1: one step is 2**(e - 24) kWh
    return max(1, -(-1_000_000 * (1 << (e + 40)) // (1 << 64)))  # (mwh >= 1: e >= -19)


def split_largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights` exactly (sum of the parts == total, each part >= 0).

    Largest remainder; ties go to the later index. All-zero weights: everything to the last part.
    """
    n = len(weights)
    w = sum(weights)
    if n == 0:
        return []
    if w <= 0 or total == 0:
        out = [0] * n
        out[-1] = total
        return out
    parts = [total * x // w for x in weights]
    left = total - sum(parts)
    if left:
        order = sorted(range(n), key=lambda i: ((total * weights[i]) % w, i), reverse=True)
        for i in order[:left]:
            parts[i] += 1
    return parts


OK, FIRST, WRAP, RESET, SWAP, JUMP, DIP = "ok", "first", "wrap", "reset", "swap", "implausible", "dip"


@dataclass(frozen=True, slots=True)
class AuthorityState:
    """A register's or counter's checkpoint: the last raw value (None before the first) and the continuous offset."""

    last_raw: int | None
    offset: int
    held: int | None = None  # a register's lower reading not yet believed (DIP); None in older checkpoints


class Authority:
    """The register or pulse counter of one source, kept on a continuous scale (see the module docstring)."""

    __slots__ = ("held", "imp", "kind", "last_raw", "offset", "rebase_raw", "step", "wrap")

    def __init__(self, spec: EnergySpec) -> None:
        self.kind = spec.kind
        self.imp = spec.imp_per_kwh
        self.wrap = spec.wrap_pulses if spec.kind == "pulses" else spec.wrap_mwh
        self.step = spec.step_mwh if spec.kind == "register" else pulses_to_mwh(1, spec.imp_per_kwh) + 1
        self.last_raw: int | None = None
        self.offset = 0
        self.held: int | None = None  # a register's lower reading, not yet believed (DIP, module docstring)
        self.rebase_raw = 0  # after a SWAP: the raw value the continuous scale was re-based at

    @property
    def cont(self) -> int:
        """Last value on the continuous scale (mWh for registers, pulses for pulse counters); 0 before any."""
        return 0 if self.last_raw is None else self.last_raw + self.offset

    def mwh(self, cont: int) -> int:
        return cont if self.kind == "register" else pulses_to_mwh(cont, self.imp)

    def observe(self, raw: int, dt_ns: int, max_power_mw: int, *, swapped: bool = False) -> tuple[str, int]:
        """Take a new raw value; return (status, energy delta in mWh). Updates the continuous scale."""
        last = self.last_raw
        if last is None:
            self.last_raw = raw
            return FIRST, 0
        before = self.mwh(last + self.offset)
        step = self.step if self.kind != "register" else max(self.step, float32_step_mwh(max(raw, last)))
        bound = max_power_mw * max(dt_ns, 0) * PLAUSIBLE_FACTOR // MW_NS_PER_MWH + step
        held, self.held = self.held, None
        if swapped:
            self.offset = last + self.offset - raw
            self.last_raw = self.rebase_raw = raw
            return SWAP, 0
        status = OK
        if raw < last:
            if self.wrap and self.mwh(raw + self.wrap) - self.mwh(last) <= bound:
                self.offset += self.wrap
                status = WRAP
            elif self.kind == "register" and (held is None or raw < held or self.mwh(raw - held) > bound):
                self.held = raw  # one lower reading is not believed yet: the next one decides
                return DIP, 0
            elif self.mwh(held if held is not None else raw) <= bound:
                self.offset = last + self.offset  # counted from zero
                status = RESET
            else:
                base = held if held is not None else raw
                self.offset = last + self.offset - base
                self.last_raw = self.rebase_raw = base
                status = SWAP  # counted from the held value on: the energy since the swap
        self.last_raw = raw
        delta = self.mwh(raw + self.offset) - before
        if status == OK and delta > bound:
            return JUMP, delta
        return status, delta

    def snapshot(self) -> AuthorityState:
        return AuthorityState(self.last_raw, self.offset, self.held)

    def restore(self, s: AuthorityState) -> None:
        self.last_raw = s.last_raw
        self.offset = s.offset
        self.held = s.held
