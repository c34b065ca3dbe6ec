"""S0 pulse meter on a GPIO input: a cumulative pulse count, and power from the interval between pulses.

An S0 output (DIN 43864 / IEC 62053-31) closes a contact for at least 30 ms per pulse, `imp_per_kwh` pulses per
kWh. Wired between the GPIO and ground with the Pi's pull-up, a pulse is a low level ("active low").

What the source yields:
- `PULSES` at start (the `start_count` the gateway restored from the meter's checkpoint) and at every pulse:
  the cumulative count, so a restart continues where the checkpoint left off instead of starting again at zero.
- `PULSES` again every `heartbeat_s` (default 30) without a pulse, so an idle appliance is not a silent source.
- `POWER_MW` at every pulse after the first: the average power over the interval since the previous pulse,
  `3.6e9 / (imp_per_kwh * interval_s)` mW, exact integer arithmetic. Stamped with the pulse edge's own time.
- While no pulse comes for longer than the last interval, power is at most what one pulse in the time since the
  last one would mean; that upper bound is reported every `report_s` as `ESTIMATED`. After `zero_after_s` without
  a pulse it reports 0 (`ESTIMATED`) once. The next pulse after such a zero starts a new interval chain: the
  hours-long gap before it says nothing about the appliance's power now.

Counting is on the leading (active) edge, debounced on edge timestamps (see `edges.Debouncer`): a level shorter
than `bounce_ms` is a bounce, counted under health error "bounce" and never a pulse. `bounce_ms` is also given
to the pin factory; lgpio reads it as "stable for N µs", so keep it well below the 30 ms pulse width.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from fractions import Fraction
from typing import Any, ClassVar, Self

from koto.clock import Clock
from koto.reading import Quality, Quantity, Reading

from ..base import Claim, Source
from .config import Keys
from .edges import Debouncer, Edge, s0_power_mw, to_fraction
from .inputs import EdgeInput, real_seconds

S0_PULSE_WIDTH_MS = 30


class S0PulseSource(Source):
    driver: ClassVar[str] = "s0"
    energy_kind = "pulses"
    needs = frozenset({"pin_factory"})
    takes_start_count = True
    KEYS: ClassVar[tuple[str, ...]] = (
        "pin", "imp_per_kwh", "pull", "active", "bounce_ms", "zero_after_s", "report_s", "poll_s", "heartbeat_s",
    )

    def __init__(self, name: str, *, clock: Clock, pin: int, imp_per_kwh: float | int | str | Fraction,
                 pin_factory: Any = None, start_count: int = 0, pull: str = "up", active_high: bool = False,
                 bounce_ms: float = 5.0, zero_after_s: float = 600.0, report_s: float = 5.0,
                 poll_s: float = 1.0, heartbeat_s: float = 30.0) -> None:
        super().__init__(name, clock=clock)
        imp = imp_per_kwh if isinstance(imp_per_kwh, Fraction) else to_fraction(imp_per_kwh)
        if imp <= 0:
            raise ValueError("imp_per_kwh must be positive")
        if start_count < 0:
            raise ValueError("start_count must not be negative")
        self.imp_per_kwh = imp
        self.count = start_count
        self.start_count = start_count
        self.bounce_ns = round(bounce_ms * 1e6)
        self.zero_after_ns = round(zero_after_s * 1e9)
        self.report_ns = round(report_s * 1e9)
        self.heartbeat_ns = round(heartbeat_s * 1e9)
        self.poll_s = poll_s
        self.pin_factory = pin_factory
        self._input = EdgeInput(pin, pull=pull, active_high=active_high, bounce_s=bounce_ms / 1000,
                                clock=clock, pin_factory=pin_factory)
        self._deb: Debouncer | None = None
        self._last_pulse_ns: int | None = None
        self._last_interval_ns: int | None = None
        self._chain_start_ns = 0  # when we started watching, or the last zero: the decay's reference point
        self._emitted_ns = 0  # the newest stamp handed out: readings leave in time order
        self._zero_reported = False
        self._last_decay_ns: int | None = None

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, pin_factory: Any = None,
                    start_count: int = 0, **_: Any) -> Self:
        k = Keys(name, cfg, cls.KEYS, collect=True)
        pin = k.pin()
        k.number("imp_per_kwh", lo=0, hi=1_000_000, lo_open=True)  # the exact value comes from its spelling
        pull, active_high = k.polarity()
        bounce = k.number("bounce_ms", 5.0, lo=0, hi=S0_PULSE_WIDTH_MS, lo_open=False)
        if bounce >= S0_PULSE_WIDTH_MS and not k.bad("bounce_ms"):
            k.fail("bounce_ms", f"{bounce:g} must be below the {S0_PULSE_WIDTH_MS} ms S0 pulse width, "
                                "or every pulse is rejected; 5 is a good value")
        zero_after = k.number("zero_after_s", 600.0, lo=1, hi=86_400)
        report = k.number("report_s", 5.0, lo=0.1, hi=3600)
        poll = k.number("poll_s", 1.0, lo=0.01, hi=60)
        heartbeat = k.number("heartbeat_s", 30.0, lo=1, hi=3600)
        k.done()
        return cls(name, clock=clock, pin=pin, imp_per_kwh=cfg["imp_per_kwh"], pin_factory=pin_factory,
                   start_count=start_count, pull=pull, active_high=active_high, bounce_ms=bounce,
                   zero_after_s=zero_after, report_s=report, poll_s=poll, heartbeat_s=heartbeat)

    @property
    def bounces_rejected(self) -> int:
        return 0 if self._deb is None else self._deb.rejected

    def claims(self) -> tuple[Claim, ...]:
        return (Claim(f"gpio:{self._input.pin_number}", "pin"),)

    async def _open(self) -> None:
        if self.pin_factory is None:
            from ..pins import select_pin_factory

            self.pin_factory = self._input.pin_factory = select_pin_factory()
        active = self._input.open()
        self._deb = Debouncer(self.bounce_ns, initial_active=active)
        self._chain_start_ns = self.clock.now().mono_ns
        self._emitted_ns = 0

    async def _close(self) -> None:
        self._input.close()

    def _reading(self, t_ns: int, quantity: Quantity, value: int, quality: Quality = Quality.GOOD) -> Reading:
        # Readings leave in time order: an edge that reaches us after a decay reading was stamped "now" (lgpio's
        # thread, or a simulator driving edges in steps) is stamped at that reading's time instead of before it.
        # The count is unaffected; power still uses the edges' own times.
        t_ns = max(t_ns, self._emitted_ns)
        self._emitted_ns = t_ns
        now = self.clock.now()
        wall = now.wall - (now.mono_ns - t_ns) / 1e9
        return Reading(self.name, t_ns, wall, now.boot_id, quantity, value, quality, now.synced)

    def _on_pulse(self, t_ns: int) -> list[Reading]:
        self.count += 1
        out = [self._reading(t_ns, Quantity.PULSES, self.count)]
        last = self._last_pulse_ns
        if last is not None and t_ns > last and not self._zero_reported:
            interval = t_ns - last
            self._last_interval_ns = interval
            out.append(self._reading(t_ns, Quantity.POWER_MW, s0_power_mw(self.imp_per_kwh, interval)))
        else:
            self._last_interval_ns = None
        self._last_pulse_ns = t_ns
        self._chain_start_ns = t_ns
        self._zero_reported = False
        self._last_decay_ns = None
        return out

    def _confirmed(self, edges: list[Edge]) -> list[Reading]:
        out: list[Reading] = []
        for e in edges:
            if e.active:
                out.extend(self._on_pulse(e.t_ns))
        return out

    def _decay(self, now_ns: int) -> list[Reading]:
        """The upper bound while pulses are late, then zero; nothing while a pulse is still being debounced."""
        assert self._deb is not None
        if self._zero_reported or (self._deb.pending is not None and self._deb.pending.active):
            return []
        since = now_ns - self._chain_start_ns
        if since >= self.zero_after_ns:
            self._zero_reported = True
            self._last_interval_ns = None
            return [self._reading(now_ns, Quantity.POWER_MW, 0, Quality.ESTIMATED)]
        interval = self._last_interval_ns
        if interval is None or since <= interval:
            return []
        if self._last_decay_ns is not None and now_ns - self._last_decay_ns < self.report_ns:
            return []
        self._last_decay_ns = now_ns
        return [self._reading(now_ns, Quantity.POWER_MW, s0_power_mw(self.imp_per_kwh, since), Quality.ESTIMATED)]

    def _wait_s(self, now_ns: int) -> float:
        """Real seconds until something may be due: a pending level's confirmation, or the next poll."""
        assert self._deb is not None
        wait = self.poll_s
        due = self._deb.due_ns()
        if due is not None:
            wait = min(wait, max(0.0, (due - now_ns) / 1e9))
        return real_seconds(self.clock, wait)

    def _process(self) -> list[Reading]:
        assert self._deb is not None
        out: list[Reading] = []
        before = (self._deb.rejected, self._deb.backwards)
        for t_ns, active in self._input.take():
            out.extend(self._confirmed(self._deb.feed(t_ns, active)))
        now_ns = self.clock.now().mono_ns
        out.extend(self._confirmed(self._deb.flush(now_ns)))
        out.extend(self._decay(now_ns))
        if not out and now_ns - self._emitted_ns >= self.heartbeat_ns:
            # No pulse is also a reading: an idle appliance draws nothing, and the meter must not mistake the
            # silence for a dead source (it would write a `gap`). The count is restated every `heartbeat_s`.
            out.append(self._reading(now_ns, Quantity.PULSES, self.count))
        bounced = self._deb.rejected - before[0]
        if bounced:
            self.health.errors["bounce"] += bounced - 1
            self._count_error("bounce", "rejected a level shorter than %g ms (contact bounce or noise; "
                              "%d so far)", self.bounce_ns / 1e6, self._deb.rejected)
        if self._deb.backwards - before[1]:
            self._count_error("edge_time", "an edge was stamped earlier than the one before it; check the pin "
                              "factory's timebase")
        return out

    async def _readings(self) -> AsyncIterator[Reading]:
        assert self._deb is not None, "use `async with` before iterating"
        yield self._emit(self._reading(self.clock.now().mono_ns, Quantity.PULSES, self.count))
        while True:
            for r in self._process():
                yield self._emit(r)
            await self._input.wait(self._wait_s(self.clock.now().mono_ns))
