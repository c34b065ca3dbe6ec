"""Every clock has the whole `Clock` protocol, so a driver uses any of them without asking which it was given."""

from __future__ import annotations

import time

from koto.clock import Clock, ManualClock, ScaledClock, SystemClock

S = 1_000_000_000


async def test_each_clock_relates_its_timeline_to_real_time() -> None:
    clocks: list[Clock] = [SystemClock(), ManualClock(), ScaledClock(100.0)]  # mypy checks the protocol here
    real = time.monotonic_ns()
    system, manual, scaled = clocks
    assert (system.factor, manual.factor, scaled.factor) == (1.0, 1.0, 100.0)
    assert system.from_real_mono_ns(real) == manual.from_real_mono_ns(real) == real
    assert scaled.from_real_mono_ns(real + S) - scaled.from_real_mono_ns(real) == 100 * S


async def test_sleeping_on_a_manual_clock_moves_it_and_on_a_scaled_clock_takes_a_fraction_of_real_time() -> None:
    manual = ManualClock(mono_ns=5 * S, wall=1000.0)
    await manual.sleep(90.0)
    assert (manual.now().mono_ns, manual.now().wall) == (95 * S, 1090.0)

    scaled = ScaledClock(1000.0)
    before, real0 = scaled.now().mono_ns, time.monotonic()
    await scaled.sleep(20.0)  # 20 ms of real time
    assert scaled.now().mono_ns - before >= 20 * S
    assert time.monotonic() - real0 < 5.0  # not 20 real seconds


def test_the_clock_sync_check_looks_for_the_c_library_once_not_every_time(monkeypatch) -> None:
    """find_library runs `ldconfig -p` in a child process: the daemon checks the sync flag every 10 s for years."""
    import ctypes.util

    import koto.clock as clock

    looked: list[str] = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: looked.append(name) or real(name))
    monkeypatch.setattr(clock, "_libc", None)
    answers = {clock.kernel_clock_synced() for _ in range(5)}
    assert looked == ["c"]
    assert len(answers) == 1  # the same kernel answer each time (whatever this machine's NTP state is)
