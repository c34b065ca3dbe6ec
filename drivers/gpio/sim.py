"""Simulated GPIO hardware for tests and the demo, built on gpiozero's own MockFactory.

- `ScriptedPin`: a MockPin driven at explicit times. Its edges carry the time you give (on the source clock's
  monotonic timeline), not the moment Python ran, so a test can push 10,000 pulses at 20 Hz in well under a second
  of real time and check every interval exactly. Use `mock_factory()` to get a MockFactory that makes them.
- `drive_edges` / `drive_pulses`: push levels or S0 pulses into a ScriptedPin.
- `PulseTrain` / `run_pulse_train`: turn a power profile into S0 pulses (one per 1/imp kWh), so the demo's kettle
  runs through the real S0 stack.
- `MockMcp3008`: the slave side of an MCP3008 on gpiozero's mock SPI (MockSPIDevice), so `gpiozero.MCP3008`
  reads raw values the test or demo sets.

Imports gpiozero at import time: import this module only where simulation is wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin, MockSPIDevice, PinState

from koto.clock import Clock

from .edges import MW_NS_PER_KWH, to_fraction

S0_WIDTH_NS = 30_000_000


class ScriptedPin(MockPin):  # type: ignore[misc]
    """A MockPin whose edges are stamped with explicit times (clock-timeline nanoseconds)."""

    koto_timebase = "clock"  # tells drivers.gpio.inputs the stamps are already on the source clock
    _scripted_ticks: float | None = None
    _state: bool
    _last_change: float
    states: list[Any]

    def drive_at(self, high: bool, t_ns: int) -> None:
        """Drive the input high or low as of `t_ns`; fires edge detection with that stamp."""
        self._scripted_ticks = t_ns / 1e9
        try:
            if high:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._scripted_ticks = None

    def _change_state(self, value: bool) -> bool:
        t = self._scripted_ticks
        if t is None:
            return bool(super()._change_state(value))
        if self._state == value:
            return False
        self._state = value
        self.states.append(PinState(t - self._last_change, value))
        self._last_change = t  # MockPin passes this to when_changed as the edge's ticks
        return True


def mock_factory(revision: str | None = None) -> Any:
    """A gpiozero MockFactory whose pins are ScriptedPins (a Pi 3B by default, like gpiozero's own tests)."""
    return MockFactory(revision=revision, pin_class=ScriptedPin)


def _scripted(pin_factory_or_pin: Any, pin: int | None) -> ScriptedPin:
    p = pin_factory_or_pin if pin is None else pin_factory_or_pin.pin(pin)
    if not isinstance(p, ScriptedPin):
        raise TypeError(f"{p!r} is a {type(p).__name__}; build the factory with drivers.gpio.sim.mock_factory()")
    return p


def drive_edges(pin: Any, edges: Iterable[tuple[int, bool]], *, number: int | None = None) -> None:
    """Drive `(t_ns, high)` levels into a ScriptedPin (or factory + `number`), in order."""
    p = _scripted(pin, number)
    for t_ns, high in edges:
        p.drive_at(high, t_ns)


def drive_pulses(pin: Any, times_ns: Iterable[int], *, width_ns: int = S0_WIDTH_NS, active_low: bool = True,
                 number: int | None = None) -> int:
    """Drive one S0 pulse starting at each time (active for `width_ns`); returns how many were driven."""
    p = _scripted(pin, number)
    idle = active_low  # an open collector with a pull-up idles high and pulls low during a pulse
    n = 0
    for t in times_ns:
        p.drive_at(not idle, t)
        p.drive_at(idle, t + width_ns)
        n += 1
    return n


class PulseTrain:
    """Integrates power over time and says when each S0 pulse (1/imp kWh) falls due, exactly."""

    def __init__(self, imp_per_kwh: float | int | str, *, start_ns: int) -> None:
        self.quantum = Fraction(MW_NS_PER_KWH) / to_fraction(imp_per_kwh)  # mW·ns per pulse
        self.t_ns = start_ns
        self.energy = Fraction(0)  # mW·ns since the last pulse
        self.pulses = 0

    def advance(self, t_ns: int, power_mw: int) -> list[int]:
        """Power `power_mw` held from the last call until `t_ns`; returns the pulse times in that span."""
        out: list[int] = []
        if t_ns <= self.t_ns:
            return out
        if power_mw > 0:
            t = Fraction(self.t_ns)
            e = self.energy
            while e + power_mw * (t_ns - t) >= self.quantum:
                t = t + (self.quantum - e) / power_mw
                t_int = int(-(-t // 1))  # the first whole nanosecond at which the quantum is complete
                out.append(t_int)
                e = Fraction(0)
            self.energy = e + power_mw * (t_ns - t)
        self.t_ns = t_ns
        self.pulses += len(out)
        return out


async def run_pulse_train(pin: Any, clock: Clock, power_mw: Callable[[], int], imp_per_kwh: float | int | str,
                          *, step_s: float = 0.2, width_ns: int = S0_WIDTH_NS) -> None:
    """Drive S0 pulses into `pin` for as long as the task runs, at whatever `power_mw()` says now (demo use).

    Each step waits `step_s` of the clock's time (`clock.sleep`: compressed on a ScaledClock, moved on a ManualClock).
    """
    p = _scripted(pin, None)
    train = PulseTrain(imp_per_kwh, start_ns=clock.now().mono_ns)
    while True:
        await clock.sleep(step_s)
        drive_pulses(p, train.advance(clock.now().mono_ns, power_mw()), width_ns=width_ns)


class MockMcp3008(MockSPIDevice):  # type: ignore[misc]
    """The chip side of an MCP3008 on gpiozero's mock SPI: answers each conversion with `raw[channel]`.

    Create it before the `gpiozero.MCP3008` that talks to it (it must own the clock and select pins), with the
    same pin factory. Default pins are SPI0 CE0: clock 11, MOSI 10, MISO 9, select 8.
    """

    BITS = 10
    rx_buf: list[int]
    tx_buf: list[int]

    def __init__(self, clock_pin: int = 11, mosi_pin: int = 10, miso_pin: int = 9, select_pin: int = 8, *,
                 pin_factory: Any) -> None:
        super().__init__(clock_pin, mosi_pin, miso_pin, select_pin, pin_factory=pin_factory)
        self.raw = [0] * 8
        self.conversions = 0
        self._phase = "idle"

    def set_raw(self, channel: int, value: int) -> None:
        if not 0 <= value < 1 << self.BITS:
            raise ValueError(f"an MCP3008 reads 0..1023, not {value}")
        self.raw[channel] = value

    def on_start(self) -> None:
        super().on_start()
        self._phase = "idle"

    def on_bit(self) -> None:
        # Protocol (datasheet fig. 6-1): start bit, SGL/DIFF bit, three channel bits, then the chip clocks out
        # a null bit and the 10-bit result, most significant bit first.
        if self._phase == "idle":
            if self.rx_buf[-1]:
                self._phase = "mode"
                self.rx_buf = []
        elif self._phase == "mode":
            self._phase = "single" if self.rx_buf[-1] else "diff"
            self.rx_buf = []
        elif self._phase in ("single", "diff"):
            if len(self.rx_buf) == 3:
                channel = self.rx_word()
                if self._phase == "single":
                    value = self.raw[channel]
                else:
                    value = max(0, self.raw[channel] - self.raw[channel ^ 1])
                self.conversions += 1
                self.tx_word(value, self.BITS + 2)
                self._phase = "result"
        elif self._phase == "result" and not self.tx_buf:
            self._phase = "idle"
            self.rx_buf = []
