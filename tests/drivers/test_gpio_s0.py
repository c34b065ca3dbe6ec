"""S0 pulse meter through real gpiozero (MockFactory with ScriptedPins): edges carry explicit times."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from fractions import Fraction

import pytest

from drivers.gpio import S0PulseSource
from drivers.gpio.sim import drive_edges, drive_pulses, mock_factory
from koto.clock import ManualClock
from koto.reading import Quality, Quantity, Reading
from tests.support.slow import scaled

MS = 1_000_000
S = 1_000_000_000
PIN = 17


def expected_power_mw(imp_per_kwh: int, interval_ns: int) -> int:
    """Written out independently of the driver: 1 kWh = 3.6e9 mW·s, one pulse = 1/imp kWh."""
    return round(Fraction(3_600_000_000, imp_per_kwh) / Fraction(interval_ns, S))


async def take(it: AsyncIterator[Reading], n: int) -> list[Reading]:
    return [await asyncio.wait_for(anext(it), scaled(5)) for _ in range(n)]


def test_the_power_formula_is_physics() -> None:
    # 1000 imp/kWh: a pulse is 1 Wh; one every 3.6 s is 1 kW = 1,000,000 mW.
    assert expected_power_mw(1000, 3600 * MS) == 1_000_000
    assert expected_power_mw(800, 450 * MS) == 10_000_000  # 1.25 Wh per 0.45 s = 10 kW


async def test_ten_thousand_pulses_at_up_to_20hz_none_lost_power_exact_bounces_rejected() -> None:
    clock = ManualClock()
    factory = mock_factory()
    pin = factory.pin(PIN)
    rng = random.Random(20)
    imp = 1000
    edges: list[tuple[int, bool]] = []  # (t_ns, high); the line idles high (pull-up), a pulse pulls it low
    times: list[int] = []
    bounces = 0
    t = 1000 * S
    for _ in range(10_000):
        t += rng.choice([50 * MS, 51 * MS, 73 * MS, 120 * MS, rng.randint(50 * MS, 3 * S)])
        times.append(t)
        edges.append((t, False))
        if rng.random() < 0.2:  # the contact bounces on release: a 1 ms low blip inside the debounce window
            edges += [(t + 30 * MS, True), (t + 31 * MS, False), (t + 32 * MS, True)]
            bounces += 1
        else:
            edges.append((t + 30 * MS, True))
    # Noise in the gaps: a 2 ms low glitch 60 ms into every gap that is long enough to hold one.
    noisy: list[tuple[int, bool]] = []
    for i, e in enumerate(edges):
        noisy.append(e)
        gap_follows = e[1] and i + 1 < len(edges) and edges[i + 1][0] - e[0] > 100 * MS
        if gap_follows and rng.random() < 0.1:
            noisy += [(e[0] + 40 * MS, False), (e[0] + 42 * MS, True)]
            bounces += 1

    src = S0PulseSource("kettle", clock=clock, pin=PIN, imp_per_kwh=imp, pin_factory=factory)
    async with src:
        it = aiter(src)
        (start,) = await take(it, 1)
        assert (start.quantity, start.value) == (Quantity.PULSES, 0)
        drive_edges(pin, noisy)
        readings = await take(it, 10_000 + 9_999)

    pulses = [r for r in readings if r.quantity is Quantity.PULSES]
    powers = [r for r in readings if r.quantity is Quantity.POWER_MW]
    assert [r.value for r in pulses] == list(range(1, 10_001))  # zero lost, none extra, in order
    assert [r.t_mono_ns for r in pulses] == times  # each stamped with its own edge, not Python's time
    assert len(powers) == 9_999
    for k, p in enumerate(powers, start=1):
        assert p.t_mono_ns == times[k]
        assert p.value == expected_power_mw(imp, times[k] - times[k - 1])
        assert p.quality is Quality.GOOD
    assert src.bounces_rejected == bounces > 0
    assert src.health.errors["bounce"] == bounces
    assert src.health.readings == 1 + 10_000 + 9_999


async def test_a_bounce_at_the_leading_edge_is_one_pulse_not_two() -> None:
    clock = ManualClock()
    factory = mock_factory()
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory)
    t = 50 * S
    async with src:
        it = aiter(src)
        await take(it, 1)
        drive_edges(factory.pin(PIN), [(t, False), (t + 1 * MS, True), (t + 2 * MS, False), (t + 35 * MS, True)])
        (r,) = await take(it, 1)
    assert (r.quantity, r.value, r.t_mono_ns) == (Quantity.PULSES, 1, t + 2 * MS)
    assert src.bounces_rejected == 1


async def test_restart_with_start_count_continues_the_cumulative_count() -> None:
    clock = ManualClock()
    factory = mock_factory()
    t = 10 * S
    first = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=800, pin_factory=factory)
    async with first:
        it = aiter(first)
        await take(it, 1)
        drive_pulses(factory.pin(PIN), [t + i * S for i in range(5)])
        got = await take(it, 5 + 4)
    checkpoint = first.count
    assert checkpoint == 5 and got[-2].value == 5

    second = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=800, pin_factory=factory,
                           start_count=checkpoint)
    async with second:
        it = aiter(second)
        (start,) = await take(it, 1)
        assert (start.quantity, start.value) == (Quantity.PULSES, 5)
        drive_pulses(factory.pin(PIN), [t + 100 * S + i * S for i in range(3)])
        got = await take(it, 3 + 2)
    assert [r.value for r in got if r.quantity is Quantity.PULSES] == [6, 7, 8]


async def test_power_decays_to_an_estimated_upper_bound_then_zero_and_restarts_cleanly() -> None:
    clock = ManualClock(mono_ns=100 * S)
    factory = mock_factory()
    pin = factory.pin(PIN)
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, zero_after_s=10,
                        report_s=1, poll_s=0.01)
    t0 = clock.mono_ns
    async with src:
        it = aiter(src)
        await take(it, 1)
        drive_pulses(pin, [t0 + 1 * S, t0 + 2 * S])
        _, p2, power = await take(it, 3)
        assert (p2.value, power.value, power.quality) == (2, 3_600_000, Quality.GOOD)  # 1 Wh per second

        clock.mono_ns = t0 + 6 * S  # 4 s without a pulse, the last interval was 1 s: at most 1 Wh in 4 s
        (late,) = await take(it, 1)
        assert (late.quantity, late.value, late.quality) == (Quantity.POWER_MW, 900_000, Quality.ESTIMATED)
        assert late.t_mono_ns == t0 + 6 * S

        clock.mono_ns = t0 + 12 * S  # 10 s since the last pulse: zero_after_s
        (zero,) = await take(it, 1)
        assert (zero.quantity, zero.value, zero.quality) == (Quantity.POWER_MW, 0, Quality.ESTIMATED)

        clock.mono_ns = t0 + 30 * S
        drive_pulses(pin, [t0 + 30 * S, t0 + 32 * S])
        a, b, again = await take(it, 3)
    # The first pulse after a zero has no usable interval (the gap says nothing about power now): no power.
    assert [(r.quantity, r.value) for r in (a, b, again)] == [
        (Quantity.PULSES, 3), (Quantity.PULSES, 4), (Quantity.POWER_MW, 1_800_000)]


async def test_a_pulse_held_active_is_counted_once_stable_even_without_a_release_edge() -> None:
    clock = ManualClock(mono_ns=5 * S)
    factory = mock_factory()
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, poll_s=0.01)
    async with src:
        it = aiter(src)
        await take(it, 1)
        drive_edges(factory.pin(PIN), [(clock.mono_ns + 1 * S, False)])
        clock.mono_ns += 2 * S  # a timer tick, not another edge, confirms it
        (r,) = await take(it, 1)
    assert (r.quantity, r.value, r.t_mono_ns) == (Quantity.PULSES, 1, 6 * S)


@pytest.mark.parametrize("active_high", [False, True])
async def test_active_level_follows_the_config(active_high: bool) -> None:
    clock = ManualClock()
    factory = mock_factory()
    pull = "down" if active_high else "up"
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, pull=pull,
                        active_high=active_high)
    async with src:
        it = aiter(src)
        await take(it, 1)
        drive_pulses(factory.pin(PIN), [10 * S, 11 * S], active_low=not active_high)
        got = await take(it, 3)
    assert [r.t_mono_ns for r in got if r.quantity is Quantity.PULSES] == [10 * S, 11 * S]


async def test_host_stamped_edges_are_mapped_onto_a_scaled_clock() -> None:
    """A plain MockPin stamps edges with time.monotonic(), as lgpio stamps them with the kernel's CLOCK_MONOTONIC:
    host time, which a ScaledClock (demo, soak) maps onto its own faster timeline."""
    import time

    from gpiozero.pins.mock import MockFactory

    from koto.clock import ScaledClock

    clock = ScaledClock(60.0)
    factory = MockFactory()
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, bounce_ms=0)
    pin = factory.pin(PIN)
    async with src:
        it = aiter(src)
        await take(it, 1)
        before = time.monotonic_ns()
        pin.drive_low()
        after = time.monotonic_ns()
        pin.drive_high()
        (r,) = await take(it, 1)
    slack = 60 * 1000  # a microsecond of float rounding, scaled
    assert clock.from_real_mono_ns(before) - slack <= r.t_mono_ns <= clock.from_real_mono_ns(after) + slack


async def test_the_demo_pulse_train_runs_through_the_real_s0_stack() -> None:
    from drivers.gpio.sim import run_pulse_train

    clock = ManualClock(mono_ns=7 * S)
    factory = mock_factory()
    src = S0PulseSource("kettle", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory)
    async with src:
        it = aiter(src)
        await take(it, 1)
        train = asyncio.create_task(run_pulse_train(factory.pin(PIN), clock, lambda: 3_600_000, 1000))
        got: list[Reading] = []
        try:
            while sum(r.quantity is Quantity.PULSES for r in got) < 4:
                got += await take(it, 1)
            got += await take(it, 1)  # the fourth pulse's power follows its count
        finally:
            train.cancel()
    pulses = [r for r in got if r.quantity is Quantity.PULSES]
    assert [r.t_mono_ns - 7 * S for r in pulses] == [1 * S, 2 * S, 3 * S, 4 * S]  # 3.6 kW: 1 Wh per second
    measured = [r.value for r in got if r.quantity is Quantity.POWER_MW and r.quality is Quality.GOOD]
    assert measured == [3_600_000] * 3


async def test_an_idle_meter_restates_its_count_so_silence_is_not_mistaken_for_a_dead_source() -> None:
    clock = ManualClock(mono_ns=100 * S)
    factory = mock_factory()
    pin = factory.pin(PIN)
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, start_count=7,
                        heartbeat_s=30, poll_s=0.01)
    t0 = clock.mono_ns
    async with src:
        it = aiter(src)
        (first,) = await take(it, 1)
        clock.mono_ns = t0 + 31 * S
        (beat,) = await take(it, 1)
        drive_pulses(pin, [t0 + 40 * S])
        (pulse,) = await take(it, 1)
    assert (first.value, beat.quantity, beat.value, beat.t_mono_ns) == (7, Quantity.PULSES, 7, t0 + 31 * S)
    assert (pulse.quantity, pulse.value) == (Quantity.PULSES, 8)


async def test_readings_leave_in_time_order_even_when_an_edge_arrives_late() -> None:
    clock = ManualClock(mono_ns=100 * S)
    factory = mock_factory()
    pin = factory.pin(PIN)
    src = S0PulseSource("m", clock=clock, pin=PIN, imp_per_kwh=1000, pin_factory=factory, report_s=1, poll_s=0.01)
    t0 = clock.mono_ns
    async with src:
        it = aiter(src)
        await take(it, 1)
        drive_pulses(pin, [t0 + 1 * S, t0 + 2 * S])
        await take(it, 3)
        clock.mono_ns = t0 + 6 * S
        (late,) = await take(it, 1)  # an estimated power stamped "now"
        drive_pulses(pin, [t0 + 5 * S])  # an edge from before that moment reaches us only now
        (pulse, power) = await take(it, 2)
    assert late.t_mono_ns == t0 + 6 * S
    assert pulse.t_mono_ns == power.t_mono_ns == t0 + 6 * S  # never before what already left
    assert (pulse.value, power.value) == (3, 1_200_000)  # the count and the power still use the edge's own time
