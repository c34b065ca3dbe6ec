"""A gpiozero input whose edges reach the asyncio loop with their own timestamps, none lost.

Why a subclass and not `pin.when_changed = lambda ...`: gpiozero keeps `when_changed` as a weak reference, so a
lambda or a closure is collected and silently stops firing. Overriding `_pin_changed(ticks, state)` on a device
the source holds strongly keeps the callback alive and hands us the edge's own timestamp (`ticks`).

Threads: with lgpio the callback runs on lgpio's own thread; the edge is passed to the loop with
`loop.call_soon_threadsafe`, and the loop appends it to a deque and wakes the reader. With MockFactory the callback
runs on whichever thread drove the pin (often the loop itself); the same path works.

Timebase: gpiozero's `ticks` are seconds on the pin factory's clock. With lgpio they are the kernel's edge
timestamps divided by 1e9; lgpio asks for CLOCK_MONOTONIC stamps (it does not set LG_SET_REALTIME_CLOCK, and
gpiozero masks that flag out), the same clock as `time.monotonic_ns()`. A plain MockPin stamps with
`time.monotonic()`, also host-monotonic. Host stamps go through the source clock's `from_real_mono_ns` (the
identity for SystemClock; ScaledClock compresses time). A `ScriptedPin` (drivers.gpio.sim) already carries times on
the source clock's own timeline, so its stamps are used unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from koto.clock import Clock

PULL_UP: dict[str, bool | None] = {"up": True, "down": False, "none": None}


def ticks_to_clock_ns(clock: Clock, pin: Any) -> Callable[[float], int]:
    """The mapping from a pin's `ticks` (float seconds) to the clock's monotonic nanoseconds, chosen per pin."""
    if getattr(pin, "koto_timebase", "host") == "clock":
        return lambda ticks: round(ticks * 1e9)
    return lambda ticks: clock.from_real_mono_ns(round(ticks * 1e9))


@functools.cache
def _edge_device_class() -> type:
    """Defined on first use so that importing this module does not import gpiozero."""
    from gpiozero import DigitalInputDevice

    class EdgeDevice(DigitalInputDevice):  # type: ignore[misc]
        """A DigitalInputDevice that forwards every raw edge (ticks, level) to `sink`."""

        def __init__(self, pin: int, *, sink: Callable[[float, int], None], **kw: Any) -> None:
            self._koto_sink: Callable[[float, int], None] | None = None
            super().__init__(pin, **kw)
            self._koto_sink = sink

        def _pin_changed(self, ticks: float, state: int) -> None:
            sink = self._koto_sink
            if sink is not None:
                sink(ticks, state)

    return EdgeDevice


class EdgeInput:
    """Owns one input pin; queues `(t_ns, active)` edges on the clock's timeline for the asyncio loop."""

    def __init__(self, pin: int, *, pull: str, active_high: bool, bounce_s: float, clock: Clock,
                 pin_factory: Any) -> None:
        self.pin_number = pin
        self.pull = pull
        self.active_high = active_high
        self.bounce_s = bounce_s
        self.clock = clock
        self.pin_factory = pin_factory
        self.edges: collections.deque[tuple[int, bool]] = collections.deque()
        self.wake = asyncio.Event()
        self.dropped_after_close = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._device: Any = None
        self._to_ns: Callable[[float], int] = lambda t: round(t * 1e9)

    def open(self) -> bool:
        """Claim the pin and start edge detection; returns the current (active) level."""
        self._loop = asyncio.get_running_loop()
        pull_up = PULL_UP[self.pull]
        kw: dict[str, Any] = {"pull_up": pull_up, "pin_factory": self.pin_factory,
                              "bounce_time": self.bounce_s or None}
        if pull_up is None:
            # gpiozero needs an active state for a floating pin; we interpret raw levels ourselves anyway.
            kw["active_state"] = True
        self._device = _edge_device_class()(self.pin_number, sink=self._on_edge, **kw)
        self._to_ns = ticks_to_clock_ns(self.clock, self._device.pin)
        return self.level_active()

    def level_active(self) -> bool:
        return bool(self._device.pin.state) == self.active_high

    def close(self) -> None:
        dev, self._device = self._device, None
        self._loop = None
        if dev is not None:
            dev._koto_sink = None
            dev.close()

    def _on_edge(self, ticks: float, state: int) -> None:
        """Runs on the backend's thread. Convert the stamp here (cheap, pure) and hand over to the loop."""
        loop = self._loop
        if loop is None:
            self.dropped_after_close += 1
            return
        edge = (self._to_ns(ticks), bool(state) == self.active_high)
        try:
            loop.call_soon_threadsafe(self._deliver, edge)
        except RuntimeError:  # the loop closed under us during shutdown
            self.dropped_after_close += 1

    def _deliver(self, edge: tuple[int, bool]) -> None:
        self.edges.append(edge)
        self.wake.set()

    def take(self) -> list[tuple[int, bool]]:
        out = list(self.edges)
        self.edges.clear()
        self.wake.clear()
        return out

    async def wait(self, timeout_s: float | None) -> None:
        """Until an edge arrives or `timeout_s` (real seconds) passes."""
        if self.edges:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout_s)


def real_seconds(clock: Clock, clock_seconds: float) -> float:
    """How long to wait in real time for `clock_seconds` to pass on `clock` (ScaledClock runs faster)."""
    return max(0.0, clock_seconds / clock.factor)
