"""Pure edge handling: debounce on the edges' own timestamps, and S0 pulse arithmetic. No I/O, no threads.

Both GPIO inputs (S0 and signal) feed raw edges `(t_ns, active)` into a `Debouncer` and act on the transitions it
confirms. The debouncer applies lgpio's rule, "a level counts once it has been stable for N", to the timestamps the
kernel gave the edges, so the result does not depend on when Python happened to run:

- a level that lasts at least N is confirmed, stamped with the time it began;
- a level that ends sooner is a bounce: it is dropped and counted;
- a level that is still pending is confirmed by the next edge, or by `flush(now)` once N has passed.

On a Pi with lgpio the kernel (or lgpio) already applies the same rule, so this second pass changes nothing there;
with MockFactory, whose pins ignore `bounce`, it is the only filter, which keeps tests and demo honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

# 1 kWh = 3.6e6 W·s = 3.6e9 mW·s; in mW·ns that is 3.6e18.
MW_NS_PER_KWH = 3_600_000_000_000_000_000


@dataclass(frozen=True, slots=True)
class Edge:
    t_ns: int
    active: bool


class Debouncer:
    """Confirms levels that were stable for `min_stable_ns`; counts the ones that were not in `rejected`."""

    def __init__(self, min_stable_ns: int, *, initial_active: bool) -> None:
        if min_stable_ns < 0:
            raise ValueError("min_stable_ns must not be negative")
        self.min_stable_ns = min_stable_ns
        self.stable = initial_active
        self.pending: Edge | None = None
        self.rejected = 0
        self.backwards = 0
        self._last_t: int | None = None

    def feed(self, t_ns: int, active: bool) -> list[Edge]:
        """One raw edge in; the transitions it confirms out (zero, one, or, with N = 0, two)."""
        if self._last_t is not None and t_ns < self._last_t:
            # Edges come from one kernel queue in order; a step back means a misconfigured timebase. Keep order.
            self.backwards += 1
            t_ns = self._last_t
        self._last_t = t_ns
        out = self.flush(t_ns)
        p = self.pending
        if p is not None:
            if active != p.active:
                # The pending level ended before it had been stable long enough: a bounce.
                self.pending = None
                self.rejected += 1
            return out  # same level again (an edge the kernel merged): keep the earlier start
        if active != self.stable:
            self.pending = Edge(t_ns, active)
            out.extend(self.flush(t_ns))
        return out

    def flush(self, now_ns: int) -> list[Edge]:
        """Confirm the pending level if it has been stable for N by `now_ns` (a timer tick or a later edge)."""
        p = self.pending
        if p is None or now_ns - p.t_ns < self.min_stable_ns:
            return []
        self.pending = None
        self.stable = p.active
        return [p]

    def due_ns(self) -> int | None:
        """When the pending level will be confirmed if nothing else happens (for the caller's timer)."""
        return None if self.pending is None else self.pending.t_ns + self.min_stable_ns


def s0_power_mw(imp_per_kwh: Fraction, interval_ns: int) -> int:
    """Average power over one pulse interval, in integer milliwatts (exact arithmetic, half-even rounding).

    One pulse is 1/imp kWh = 3.6e9/imp mW·s, so P = 3.6e9 / (imp * interval_s) mW;
    e.g. 1000 imp/kWh and a pulse every 3.6 s is 1 Wh per 3.6 s = 1 kW = 1,000,000 mW.
    """
    if interval_ns <= 0:
        raise ValueError("interval must be positive")
    return round(Fraction(MW_NS_PER_KWH) / (imp_per_kwh * interval_ns))


def to_fraction(x: float | int | str) -> Fraction:
    """A config number (1000, 800.0, "0.5") as an exact fraction, via its decimal spelling."""
    return Fraction(str(x))
