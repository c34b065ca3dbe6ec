"""A digital input as a named signal: a door contact, a heater relay's auxiliary contact, a mode selector.

Yields one `SIGNAL` reading at start (the current level, so the meter never has to guess) and one on every
debounced change. The value is a string: "on"/"off" by default, or the names the installer configured
(`active_value = "open"`, `inactive_value = "closed"`). Debounce is "stable for `bounce_ms`" on the edges' own
timestamps (see `edges.Debouncer`), the same rule lgpio applies; a change is reported with the time it began.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Self

from koto.clock import Clock
from koto.reading import Quantity, Reading

from ..base import Claim, Source
from .config import Keys
from .edges import Debouncer
from .inputs import EdgeInput, real_seconds


class SignalSource(Source):
    driver: ClassVar[str] = "gpio_signal"
    needs = frozenset({"pin_factory"})
    KEYS: ClassVar[tuple[str, ...]] = (
        "pin", "signal", "pull", "active", "bounce_ms", "active_value", "inactive_value",
    )

    def __init__(self, name: str, *, clock: Clock, pin: int, pin_factory: Any = None, signal: str = "",
                 pull: str = "up", active_high: bool = False, bounce_ms: float = 50.0,
                 active_value: str = "on", inactive_value: str = "off") -> None:
        super().__init__(name, clock=clock)
        if active_value == inactive_value:
            raise ValueError("active_value and inactive_value must differ")
        self.signal = signal or name
        self.active_value = active_value
        self.inactive_value = inactive_value
        self.bounce_ns = round(bounce_ms * 1e6)
        self.pin_factory = pin_factory
        self._input = EdgeInput(pin, pull=pull, active_high=active_high, bounce_s=bounce_ms / 1000,
                                clock=clock, pin_factory=pin_factory)
        self._deb: Debouncer | None = None

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, pin_factory: Any = None,
                    **_: Any) -> Self:
        k = Keys(name, cfg, cls.KEYS, collect=True)
        pin = k.pin()
        pull, active_high = k.polarity()
        on = k.text("active_value", "on")
        off = k.text("inactive_value", "off")
        if on == off and not k.bad("active_value", "inactive_value"):
            k.fail("inactive_value", f"{off!r} is the same as active_value; the two states need two names")
        signal = k.text("signal", name)
        bounce = k.number("bounce_ms", 50.0, lo=0, hi=10_000)
        k.done()
        return cls(name, clock=clock, pin=pin, pin_factory=pin_factory, signal=signal, pull=pull,
                   active_high=active_high, bounce_ms=bounce, active_value=on, inactive_value=off)

    @property
    def value(self) -> str:
        """The debounced state now."""
        assert self._deb is not None
        return self.active_value if self._deb.stable else self.inactive_value

    def claims(self) -> tuple[Claim, ...]:
        return (Claim(f"gpio:{self._input.pin_number}", "pin"),)

    async def _open(self) -> None:
        if self.pin_factory is None:
            from ..pins import select_pin_factory

            self.pin_factory = self._input.pin_factory = select_pin_factory()
        self._deb = Debouncer(self.bounce_ns, initial_active=self._input.open())

    async def _close(self) -> None:
        self._input.close()

    def _reading(self, t_ns: int, active: bool) -> Reading:
        now = self.clock.now()
        wall = now.wall - (now.mono_ns - t_ns) / 1e9
        value = self.active_value if active else self.inactive_value
        return Reading(self.name, t_ns, wall, now.boot_id, Quantity.SIGNAL, value, wall_synced=now.synced,
                       signal=self.signal)

    def _process(self) -> list[Reading]:
        deb = self._deb
        assert deb is not None
        before = deb.rejected
        changes = []
        for t_ns, active in self._input.take():
            changes.extend(deb.feed(t_ns, active))
        changes.extend(deb.flush(self.clock.now().mono_ns))
        if deb.rejected > before:
            self.health.errors["bounce"] += deb.rejected - before - 1
            self._count_error("bounce", "ignored a change shorter than %g ms (contact bounce)", self.bounce_ns / 1e6)
        return [self._reading(e.t_ns, e.active) for e in changes]

    async def _readings(self) -> AsyncIterator[Reading]:
        deb = self._deb
        assert deb is not None, "use `async with` before iterating"
        yield self._emit(self._reading(self.clock.now().mono_ns, deb.stable))
        while True:
            for r in self._process():
                yield self._emit(r)
            due = deb.due_ns()
            wait = 1.0 if due is None else min(1.0, max(0.0, (due - self.clock.now().mono_ns) / 1e9))
            await self._input.wait(real_seconds(self.clock, wait))
