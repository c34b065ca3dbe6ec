"""A use begins where its first function began, not where the standby before it began.

A use is confirmed by the cycle rule (`start_for_s` above `start_above_w`), a function by its dwell (`min_on_s`).
When the use is confirmed first, the function that will open it is still a candidate, marked inside the open
standby segment: the use must start at that mark, and the standby before the mark stays outside the use — also when
the meter is checkpointed and restored in the middle of the dwell, and also on a register source.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter, FeedResult
from metering.profile import Profile, parse_profile
from metering.records import PARTITION_KINDS, RecordKind, UsageRecord

S = 1_000_000_000
WALL0 = 1_764_460_800.0
BUILTIN = Path(__file__).resolve().parents[2] / "metering" / "profiles" / "washing_machine.toml"


def washer(start_for_s: int) -> Profile:
    """The built-in washer with the use confirmed after `start_for_s` (fill's dwell is 12 s)."""
    data = tomllib.loads(BUILTIN.read_text())
    data["cycle"]["start_for_s"] = start_for_s
    return parse_profile(data, file="washer-test")


def trace(kind: str) -> list[tuple[int, list[Reading]]]:
    """600 s of standby at 1 W, 60 s of fill at 10 W, 300 s of standby: (second, readings) at 1 Hz."""
    reg = 1_000_000
    acc = 0
    out = []
    for s in range(960):
        w = 10 if 600 <= s < 660 else 1
        t, wall = (s + 1) * S, WALL0 + s
        rs = [Reading("plug", t, wall, "boot", Quantity.POWER_MW, w * 1000)]
        if kind == "register":
            acc += w * 1000  # mW·s since the last step
            reg += acc // 3600
            acc %= 3600
            if s % 10 == 0:
                rs.append(Reading("plug", t, wall, "boot", Quantity.ENERGY_MWH, reg))
        out.append((s, rs))
    return out


def replay(m: ApplianceMeter, kind: str, *, restore_at: int | None = None) -> list[UsageRecord]:
    results: list[FeedResult] = []
    for s, rs in trace(kind):
        for r in rs:
            results.append(m.feed(r))
        results.append(m.tick(Now((s + 1) * S + S // 2, WALL0 + s + 0.5, True, "boot")))
        if s == restore_at:
            state = json.loads(json.dumps(m.snapshot()))
            m = ApplianceMeter(m.appliance, m.profile, energy=m.spec, state=state)
    results.append(m.close(Now(961 * S, WALL0 + 960, True, "boot")))
    return [i for r in results for i in r.items if isinstance(i, UsageRecord)]


@pytest.mark.parametrize("kind", ["power", "register"])
@pytest.mark.parametrize("start_for_s", [5, 15])
@pytest.mark.parametrize("restore_at", [None, 603, 606, 615])
def test_a_use_confirmed_before_its_first_function_starts_where_that_function_began(
        kind: str, start_for_s: int, restore_at: int | None) -> None:
    m = ApplianceMeter("washer", washer(start_for_s), energy=EnergySpec(kind, "plug"))  # type: ignore[arg-type]
    recs = replay(m, kind, restore_at=restore_at)
    part = [r for r in recs if r.kind in PARTITION_KINDS]
    (use,) = [r for r in recs if r.kind == RecordKind.CYCLE]
    in_use = [r for r in part if r.cycle_id == use.cycle_id]
    # the use is the fill, from where the fill began (the first 10 W reading, at second 600), and nothing before
    assert use.t_start_wall == WALL0 + 600
    assert next(r.function for r in in_use) == "fill"
    assert all(r.t_start_wall >= WALL0 + 600 for r in in_use)
    before = [r for r in part if r.t_end_wall <= WALL0 + 600]
    assert before and all(r.function == "standby" and not r.cycle_id for r in before)
    # energy: the fill's 60 s at 10 W, plus standby after it while the use waits to end (90 s at 1 W)
    fill = sum(r.energy_mwh for r in in_use if r.function == "fill")
    if kind == "power":
        assert abs(fill - 10_000 * 60 / 3600) < 1  # (whole mWh: the integral's remainder carries over)
        assert use.cycle_energy_mwh == sum(r.energy_mwh for r in in_use) <= fill + 1_000 * 91 // 3600 + 1
    else:  # (the register's 1 mWh steps, split over functions by power)
        assert abs(fill - 10_000 * 60 // 3600) <= 2


def _tiles(part: list[UsageRecord]) -> None:
    for a, b in itertools.pairwise(part):
        assert b.t_start_mono_ns == a.t_end_mono_ns and b.t_start_wall == a.t_end_wall, (a, b)


def test_the_records_still_tile_time_around_the_use() -> None:
    recs: list[Any] = replay(ApplianceMeter("washer", washer(5), energy=EnergySpec("power", "plug")), "power")
    part = [r for r in recs if r.kind in PARTITION_KINDS]
    _tiles(part)
    assert part[0].t_start_wall == WALL0 and part[-1].t_end_wall == WALL0 + 960
    assert all(r.duration_ms > 0 for r in part)  # no empty record at the use's boundary


def test_a_function_that_began_with_the_use_stays_whole_when_a_take_over_candidate_is_marked_in_it() -> None:
    """A dishwasher's wash at 7 W is confirmed before its use is; "dry" (2-20 W, takes over wash after 270 s) is
    marked inside the wash from then on. The use starts where the wash began, with all of it."""
    from metering.profile import builtin_profile

    m = ApplianceMeter("dw", builtin_profile("dishwasher"), energy=EnergySpec("power", "plug"))
    results: list[FeedResult] = []
    for s in range(2100):  # (the use ends 1800 s after the wash: the dishwasher's end_for_s)
        w = 7 if 60 <= s < 200 else 1
        results.append(m.feed(Reading("plug", (s + 1) * S, WALL0 + s, "boot", Quantity.POWER_MW, w * 1000)))
    results.append(m.close(Now(2101 * S, WALL0 + 2100, True, "boot")))
    recs = [i for r in results for i in r.items if isinstance(i, UsageRecord)]
    (use,) = [r for r in recs if r.kind == RecordKind.CYCLE]
    wash = [r for r in recs if r.function == "wash"]
    assert use.t_start_wall == WALL0 + 60 and all(r.cycle_id == use.cycle_id for r in wash)
    assert wash[0].t_start_wall == WALL0 + 60
