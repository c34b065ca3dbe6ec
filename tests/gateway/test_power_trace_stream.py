"""The power-trace writer streams its lines: the same bytes as `format_trace(ring.points())`, with a peak of
allocations that does not grow with the ring's fill (it was about 5 MB per full appliance ring, each write)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from gateway.power_log import HEADER, PowerLog, PowerRing, format_trace
from metering.energy import EnergySpec

T0 = 1_764_921_600.0


def _data_lines(ring: PowerRing) -> list[str]:
    return format_trace(ring.points()).splitlines()[1:]  # without the header


def _ring(n: int, size: int, *, step: float = 1.0, signals: tuple[tuple[float, str], ...] = ()) -> PowerRing:
    ring = PowerRing(size)
    for k in range(n):
        ring.add(T0 + k * step, 1000 * (k % 97) + 7)
    for t, v in signals:
        ring.add_signal(t, "mode", v)
    return ring


@pytest.mark.parametrize("n", [0, 1, 5, 10, 23])
def test_lines_are_the_points_lines(n):
    ring = _ring(n, 10, step=0.5, signals=((T0 + 1.0, "cool"), (T0 - 50, "old"), (T0 + 3.55, "heat"),
                                          (T0 + 1000, "late")))
    assert list(ring.trace_lines()) == _data_lines(ring)


def test_a_signal_at_the_time_of_a_reading_comes_first():
    ring = _ring(4, 8, signals=((T0 + 2.0, "on"),))
    lines = list(ring.trace_lines())
    assert lines == _data_lines(ring)
    assert lines.index(f"{T0 + 2:.3f},,mode,on") == lines.index(f"{T0 + 2:.3f},2.007,,") - 1


def test_a_wall_clock_step_back_sorts_like_points():
    ring = PowerRing(16)
    for k, t in enumerate([5.0, 6.0, 7.0, 2.0, 3.0]):
        ring.add(T0 + t, k * 1000)
    ring.add_signal(T0 + 2.5, "mode", "dry")
    assert list(ring.trace_lines()) == _data_lines(ring)


def test_the_written_file_is_the_formatted_trace(tmp_path: Path):
    log = PowerLog(tmp_path, {"kettle": EnergySpec("power", "m1")}, size=100)
    log.rings["kettle"] = _ring(150, 100, signals=((T0 + 120, "boil"),))
    assert log.write(log.changed()) == 1
    text = (tmp_path / "power-kettle.csv").read_text()
    head, rest = text.split(f"{HEADER}\n", 1)
    assert head.startswith("# koto power trace of kettle, written ")
    assert rest == format_trace(log.rings["kettle"].points()).split(f"{HEADER}\n", 1)[1]


def test_writing_a_full_ring_allocates_little(tmp_path: Path):
    size = 21_600  # the daemon's ring: 6 h at 1 Hz
    log = PowerLog(tmp_path, {"kettle": EnergySpec("power", "m1")}, size=size)
    log.rings["kettle"] = _ring(size + 10, size)
    rings = log.changed()
    tracemalloc.start()
    try:
        assert log.write(rings) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024, f"{peak} bytes at the peak of one write"


@pytest.mark.parametrize("seed", range(12))
def test_chunked_lines_match_the_points_across_chunks_and_wraps(seed: int):
    """The writer formats `TRACE_CHUNK` power lines at a time; the lines must still be `format_trace(points())`'s
    across chunk borders, ring wraps, readings that round to the same tenth and signals at a reading's own time."""
    import random

    from gateway.power_log import TRACE_CHUNK

    rng = random.Random(seed)
    size = rng.choice([TRACE_CHUNK - 1, TRACE_CHUNK, 2 * TRACE_CHUNK + 5, 3000])
    n = rng.choice([1, TRACE_CHUNK, size - 1, size, size + 1, size + rng.randrange(1, 2 * size)])
    ring = PowerRing(size)
    t = T0
    times = []
    for _ in range(n):
        t += rng.choice([0.0, 0.04, 0.05, 0.06, 1.0, 2.5])
        times.append(t)
        ring.add(t, rng.randrange(0, 3_000_000))
    kept = times[-min(n, size):]
    sigs = [rng.choice(kept) for _ in range(5)] + [rng.uniform(kept[0] - 10, kept[-1] + 10) for _ in range(20)]
    for s in sorted(sigs):
        ring.add_signal(round(s, 1) if rng.random() < 0.5 else s, "mode", rng.choice(["heat", "cool"]))
    lines = list(ring.trace_lines())
    assert lines == _data_lines(ring)
    assert "".join(ring.trace_chunks()) == "".join(f"{line}\n" for line in lines)
