"""Digital signal input through real gpiozero (MockFactory with ScriptedPins)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from drivers.gpio import SignalSource
from drivers.gpio.sim import drive_edges, mock_factory
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from tests.support.slow import scaled

MS = 1_000_000
PIN = 27


async def take(it: AsyncIterator[Reading], n: int) -> list[Reading]:
    return [await asyncio.wait_for(anext(it), scaled(5)) for _ in range(n)]


async def test_reports_the_level_at_start_then_debounced_changes_with_their_own_time() -> None:
    clock = ManualClock()
    factory = mock_factory()
    pin = factory.pin(PIN)
    src = SignalSource("door", clock=clock, pin=PIN, pin_factory=factory, signal="door", bounce_ms=50,
                       active_value="open", inactive_value="closed")
    t = clock.mono_ns
    async with src:
        it = aiter(src)
        (start,) = await take(it, 1)
        assert (start.quantity, start.signal, start.value) == (Quantity.SIGNAL, "door", "closed")

        # A 10 ms blip is contact bounce; the level that then holds for 50 ms is the change.
        drive_edges(pin, [(t + 100 * MS, False), (t + 110 * MS, True), (t + 200 * MS, False)])
        clock.mono_ns = t + 260 * MS
        (opened,) = await take(it, 1)
        assert (opened.value, opened.t_mono_ns) == ("open", t + 200 * MS)

        drive_edges(pin, [(t + 400 * MS, True)])
        clock.mono_ns = t + 460 * MS
        (closed,) = await take(it, 1)
        assert (closed.value, closed.t_mono_ns) == ("closed", t + 400 * MS)
    assert src.health.errors["bounce"] == 1
    assert src.health.readings == 3


async def test_a_change_is_not_reported_before_it_has_been_stable_for_the_bounce_time() -> None:
    clock = ManualClock()
    factory = mock_factory()
    src = SignalSource("heater", clock=clock, pin=PIN, pin_factory=factory, bounce_ms=50)
    t = clock.mono_ns
    async with src:
        it = aiter(src)
        assert (await take(it, 1))[0].value == "off"
        drive_edges(factory.pin(PIN), [(t + 10 * MS, False)])
        clock.mono_ns = t + 40 * MS  # only 30 ms stable
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert not pending.done() and src.value == "off"
        clock.mono_ns = t + 60 * MS
        on = await asyncio.wait_for(pending, scaled(5))
    assert (on.value, on.signal) == ("on", "heater")


async def test_active_high_input_with_pull_down() -> None:
    clock = ManualClock()
    factory = mock_factory()
    src = SignalSource("mode", clock=clock, pin=PIN, pin_factory=factory, pull="down", active_high=True,
                       bounce_ms=0)
    async with src:
        it = aiter(src)
        assert (await take(it, 1))[0].value == "off"
        drive_edges(factory.pin(PIN), [(clock.mono_ns + MS, True)])
        (r,) = await take(it, 1)
    assert r.value == "on"
