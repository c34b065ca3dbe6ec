"""Interim slices: every `interim_s` of a segment in a use, every `idle_interim_s` of one outside any use.

Most of an appliance's day is idle standby, and an interim slice of it every 15 minutes was most of the ledger's
records (806 of 974 a day in the write-budget bench), each a transaction on the SD card. Outside a use the meter
slices at `idle_interim_s` instead; the standby energy is the same, in fewer records, and a use's slices still come
every `interim_s`.
"""

from __future__ import annotations

import itertools

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter
from metering.profile import builtin_profile, parse_profile
from metering.records import PARTITION_KINDS, RecordKind, UsageRecord

S = 1_000_000_000
WALL0 = 1_764_460_800.0


def day(meter: ApplianceMeter, watts: list[int]) -> list[UsageRecord]:
    out = []
    for s, w in enumerate(watts):
        out.append(meter.feed(Reading("plug", (s + 1) * S, WALL0 + s, "b", Quantity.POWER_MW, w * 1000)))
        out.append(meter.tick(Now((s + 1) * S + S // 2, WALL0 + s + 0.5, True, "b")))
    out.append(meter.close(Now(len(watts) * S, WALL0 + len(watts) - 1, True, "b")))
    return [i for r in out for i in r.items if isinstance(i, UsageRecord)]


def test_idle_standby_is_sliced_at_the_idle_cadence_and_a_use_at_interim_s() -> None:
    # 3 h of standby at 1 W, a 40-minute boil-and-hold of a 2 kW kettle-like load, 3 h of standby
    watts = [1] * 10_800 + [2000] * 2_400 + [1] * 10_800
    idle = ApplianceMeter("k", builtin_profile("kettle"), energy=EnergySpec("power", "plug"), interim_s=900,
                          idle_interim_s=3_600)
    same = ApplianceMeter("k", builtin_profile("kettle"), energy=EnergySpec("power", "plug"), interim_s=900)
    a, b = day(idle, watts), day(same, watts)
    interims = [r for r in a if r.kind == RecordKind.INTERIM]
    in_use = [r for r in interims if r.cycle_id]
    idle_slices = [r for r in interims if not r.cycle_id]
    assert {r.duration_ms for r in in_use} == {900_000}  # a use: every 15 minutes, as before
    assert idle_slices and {r.duration_ms for r in idle_slices} == {3_600_000}  # idle: every hour
    assert len(idle_slices) <= 6 and len([r for r in b if r.kind == RecordKind.INTERIM and not r.cycle_id]) >= 22
    # the same energy and the same uses, in fewer records, tiling time
    part_a = [r for r in a if r.kind in PARTITION_KINDS]
    part_b = [r for r in b if r.kind in PARTITION_KINDS]
    assert sum(r.energy_mwh for r in part_a) == sum(r.energy_mwh for r in part_b)
    assert [r.cycle_energy_mwh for r in a if r.kind == RecordKind.CYCLE] == [
        r.cycle_energy_mwh for r in b if r.kind == RecordKind.CYCLE]
    for x, y in itertools.pairwise(part_a):
        assert y.t_start_mono_ns == x.t_end_mono_ns


def test_a_profile_without_uses_is_sliced_at_interim_s_everywhere() -> None:
    profile = parse_profile({"name": "heater", "max_power_w": 3000,
                             "function": [{"name": "heat", "on_above_w": 100, "off_below_w": 50},
                                          {"name": "off", "on_below_w": 50}]}, file="heater")
    m = ApplianceMeter("h", profile, energy=EnergySpec("power", "plug"), interim_s=900, idle_interim_s=21_600)
    recs = day(m, [2000] * 3_600)
    assert [r.duration_ms for r in recs if r.kind == RecordKind.INTERIM] == [900_000] * 3
