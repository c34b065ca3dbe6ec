"""Pure parts: the debouncer on edge timestamps, S0 power arithmetic, and the pulse-train simulator."""

from __future__ import annotations

from fractions import Fraction

import pytest

from drivers.gpio.edges import Debouncer, Edge, s0_power_mw
from drivers.gpio.sim import PulseTrain

MS = 1_000_000


def test_a_level_counts_once_stable_for_n_and_carries_its_start_time() -> None:
    d = Debouncer(5 * MS, initial_active=False)
    assert d.feed(100 * MS, True) == []  # not yet known to be stable
    assert d.due_ns() == 105 * MS
    assert d.feed(130 * MS, False) == [Edge(100 * MS, True)]
    assert d.flush(134 * MS) == []
    assert d.flush(135 * MS) == [Edge(130 * MS, False)]
    assert d.rejected == 0


def test_a_level_shorter_than_n_is_a_counted_bounce() -> None:
    d = Debouncer(5 * MS, initial_active=False)
    assert d.feed(0, True) == []
    assert d.feed(4 * MS, False) == []
    assert d.rejected == 1 and d.pending is None and d.stable is False
    assert d.flush(10**12) == []


def test_repeated_levels_and_a_step_back_in_time_are_handled() -> None:
    d = Debouncer(5 * MS, initial_active=False)
    d.feed(10 * MS, True)
    d.feed(12 * MS, True)  # the kernel merged an edge: keep the earlier start
    assert d.feed(9 * MS, False) == [] and d.backwards == 1  # clamped to 12 ms: a 2 ms level is a bounce
    assert d.rejected == 1


def test_zero_bounce_confirms_at_once() -> None:
    d = Debouncer(0, initial_active=False)
    assert d.feed(7, True) == [Edge(7, True)]
    assert d.feed(7, False) == [Edge(7, False)]


def test_s0_power() -> None:
    assert s0_power_mw(Fraction(1000), 3600 * MS) == 1_000_000
    assert s0_power_mw(Fraction(2000), 1000 * MS) == 1_800_000
    with pytest.raises(ValueError):
        s0_power_mw(Fraction(1000), 0)


def test_pulse_train_places_pulses_exactly_one_quantum_apart() -> None:
    train = PulseTrain(1000, start_ns=0)  # 1 Wh per pulse
    assert train.advance(10_000 * MS, 1_000_000) == [3600 * MS, 7200 * MS]  # 1 kW: one every 3.6 s
    assert train.advance(12_000 * MS, 0) == []  # off: the part-filled quantum waits
    # 2.8 s of the quantum was done (10.0 - 7.2); 0.8 s more at 1 kW -> 12.8 s
    assert train.advance(13_000 * MS, 1_000_000) == [12_800 * MS]
    assert train.pulses == 3
