"""ApplianceMeter: recorded-style traces give the expected functions and uses; bad readings never reach a total;
register anomalies are explained; restarts, interim slices, time status, policy and drafts behave as specified."""

from __future__ import annotations

from typing import Any

import pytest

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter, FeedResult, LifecycleNote
from metering.policy import Decision
from metering.profile import builtin_profile
from metering.records import LIFECYCLE_TYPE, PARTITION_KINDS, USAGE_TYPE, RecordKind, UsageRecord
from tests.support import traces as T

S = 1_000_000_000


def records(results: list[Any]) -> list[UsageRecord]:
    return [i for r in results for i in r.items if isinstance(i, UsageRecord)]


def partition(results: list[Any]) -> list[UsageRecord]:
    return [r for r in records(results) if r.kind in PARTITION_KINDS]


def uses(results: list[Any]) -> int:
    return sum(r.uses for r in records(results))


def test_washer_from_power_samples_fill_heat_wash_spin_with_pauses() -> None:
    script = T.washer_script()
    m = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec("power", "plug"))
    res = T.run(m, T.build(script, source="plug"))
    assert T.function_sequence(res) == script.expected
    assert uses(res) == script.cycles
    by_fn = {r.function: r.energy_mwh for r in partition(res) if r.function == "heat"}
    assert by_fn["heat"] == 2100 * 300 * 1000 // 3600  # the dwell boundary goes back to where heat began


def test_dryer_from_register_and_power() -> None:
    script = T.dryer_script()
    m = ApplianceMeter("dryer", builtin_profile("tumble_dryer"), energy=EnergySpec("register", "sdm120"))
    items = T.build(script, source="sdm120", register=True, step_mwh=10)
    res = T.run(m, items)
    assert T.function_sequence(res) == script.expected
    assert uses(res) == 1
    regs = [int(i.value) for i in items if isinstance(i, Reading) and i.quantity is Quantity.ENERGY_MWH]
    part = partition(res)
    assert sum(r.energy_mwh for r in part) == regs[-1] - regs[0]
    assert part[0].register_start_mwh == regs[0] and part[-1].register_end_mwh == regs[-1]


def test_kettle_from_pulses_alone() -> None:
    script = T.kettle_script()
    m = ApplianceMeter("kettle", builtin_profile("kettle"),
                       energy=EnergySpec("pulses", "s0", imp_per_kwh=1000, max_gap_s=3600))
    items = T.build(script, source="s0", power=False, pulses=1000)
    res = T.run(m, items)
    assert T.function_sequence(res) == script.expected
    assert uses(res) == 2
    counts = [int(i.value) for i in items if isinstance(i, Reading)]
    assert sum(r.energy_mwh for r in partition(res)) == (counts[-1] - counts[0]) * 1000
    boil = sum(r.energy_mwh for r in partition(res) if r.function == "boil")
    assert boil > 0.95 * (2200 * 150 + 2900 * 100) * 1000 / 3600



def test_a_pulse_counter_names_an_idle_power_as_a_bound_not_a_measurement() -> None:
    """Between pulses a bare S0 counter knows only that the power is under what one more pulse now would mean: the
    kettle's return to standby says "under 508 W", where "508 W" read as a kettle in standby at 508 W."""
    m = ApplianceMeter("kettle", builtin_profile("kettle"),
                       energy=EnergySpec("pulses", "s0", imp_per_kwh=1000, max_gap_s=3600))
    res = T.run(m, T.build(T.kettle_script(), source="s0", power=False, pulses=1000))
    started = [e.message for r in res for e in r.events if e.kind == "function_started"]
    standby_after_boil = [msg for msg in started[1:] if "standby" in msg]
    assert standby_after_boil and all(" (under " in msg for msg in standby_after_boil), started
    assert all(" (under " not in msg for msg in started if "boil" in msg), started  # a count's power is measured

def test_air_conditioner_cool_and_heat_by_signal_from_another_source() -> None:
    script = T.ac_script()
    m = ApplianceMeter("ac", builtin_profile("air_conditioner"), energy=EnergySpec("register", "modbus"))
    res = T.run(m, T.build(script, source="modbus", register=True, step_s=5, signal_source="ir-bridge"))
    assert T.function_sequence(res) == script.expected
    assert uses(res) == 1
    energy = {r.function: 0 for r in partition(res)}
    for r in partition(res):
        energy[r.function] += r.energy_mwh
    assert energy["heat"] == 900 * 600 * 1000 // 3600


def test_events_speak_plain_words() -> None:
    m = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec("power", "plug"))
    res = T.run(m, T.build(T.washer_script(), source="plug"))
    msgs = [e.message for r in res for e in r.events]
    assert "washer: standby started (1.0 W)" in msgs
    assert any(msg.startswith("washer: spin started (") for msg in msgs)
    assert "washer: heat ended" in msgs


def reading(q: Quantity, v: Any, t_s: float, *, source: str = "plug", boot: str = T.BOOT, synced: bool = True,
            signal: str = "") -> Reading:
    return Reading(source, T.T0_MONO + round(t_s * S), T.T0_WALL + t_s, boot, q, v, wall_synced=synced, signal=signal)


def total(results: list[Any]) -> int:
    return sum(r.energy_mwh for r in partition(results))


@pytest.mark.parametrize(("bad", "reason"), [
    (reading(Quantity.POWER_MW, float("nan"), 30), "not_a_number"),
    (reading(Quantity.POWER_MW, None, 30), "not_integer"),
    (reading(Quantity.POWER_MW, -5, 30), "negative"),
    (reading(Quantity.POWER_MW, 50_000_000, 30), "beyond_max"),
    (reading(Quantity.ENERGY_MWH, 5, 30), "wrong_quantity"),
    (reading(Quantity.POWER_MW, 1_000, 30, source="other"), "wrong_source"),
    (reading(Quantity.POWER_MW, 2_000_000, 10), "time_backwards"),
    (reading(Quantity.SIGNAL, 3, 30, signal="mode"), "bad_signal"),
])
def test_bad_readings_are_counted_reported_and_never_reach_a_total(bad: Reading, reason: str) -> None:
    good = [reading(Quantity.POWER_MW, 1_000_000, t) for t in range(0, 60, 5)]
    clean = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec("power", "plug"))
    dirty = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec("power", "plug"))
    a = T.run(clean, good)
    mixed = [*good[:5], bad, *good[5:]]
    b = T.run(dirty, mixed)
    assert dirty.rejected == {reason: 1}
    assert next(e.message for r in b for e in r.events if e.kind == "rejected").startswith("washer: reading rejected:")
    assert total(a) == total(b) == 1000 * 55 * 1000 // 3600


def register_meter(state: dict[str, Any] | None = None, **kw: Any) -> ApplianceMeter:
    return ApplianceMeter("dryer", builtin_profile("tumble_dryer"), energy=EnergySpec("register", "m", **kw),
                          state=state)


def feed_all(m: ApplianceMeter, rs: list[Reading]) -> list[FeedResult]:
    return [res for r in rs if (res := m.feed(r))]


def notes(results: list[Any]) -> list[LifecycleNote]:
    return [i for r in results for i in r.items if isinstance(i, LifecycleNote)]


def test_register_wrap_reset_and_swap_are_explained_never_negative() -> None:
    m = register_meter(wrap_mwh=2**32)
    rs = [reading(Quantity.POWER_MW, 1_000_000, 0, source="m"),
          reading(Quantity.ENERGY_MWH, 2**32 - 100, 0, source="m"),
          reading(Quantity.ENERGY_MWH, 200, 60, source="m"),  # wrap: 300 mWh
          reading(Quantity.ENERGY_MWH, 10, 120, source="m"),  # reset: held until the next reading confirms it
          reading(Quantity.SIGNAL, "SN-2", 150, source="m", signal="serial"),
          reading(Quantity.ENERGY_MWH, 15, 180, source="m"),  # confirms the reset: counted from zero to 15
          reading(Quantity.SIGNAL, "SN-3", 200, source="m", signal="serial"),
          reading(Quantity.ENERGY_MWH, 777_777, 240, source="m"),  # swap: re-based
          reading(Quantity.ENERGY_MWH, 777_787, 300, source="m")]
    res = [*feed_all(m, rs), m.close(Now(T.T0_MONO + 300 * S, T.T0_WALL + 300, True, T.BOOT))]
    assert [n.event for n in notes(res)] == ["register_wrap", "register_reset", "meter_swap"]
    assert [n.details["counted_mwh"] for n in notes(res)] == [300, 15, 0]
    assert all(r.energy_mwh >= 0 for r in records(res))
    assert total(res) == 300 + 10 + 5 + 0 + 10
    assert {e.kind for r in res for e in r.events} >= {"register_wrap", "register_reset", "meter_swap"}


def test_implausible_jump_becomes_a_gap_billed_to_no_function() -> None:
    m = register_meter()
    rs = [reading(Quantity.POWER_MW, 2_000_000, 0, source="m"), reading(Quantity.ENERGY_MWH, 1000, 0, source="m"),
          reading(Quantity.ENERGY_MWH, 1000 + 10**9, 10, source="m")]
    res = feed_all(m, rs)
    gaps = [r for r in records(res) if r.kind == RecordKind.GAP]
    assert len(gaps) == 1 and gaps[0].energy_mwh == 10**9 and gaps[0].reason == "implausible"
    assert gaps[0].function == "" and [n.event for n in notes(res)] == ["implausible_jump"]


def test_restart_after_a_long_time_is_a_restart_gap_and_conserves() -> None:
    m = register_meter()
    res = feed_all(m, [reading(Quantity.POWER_MW, 2_000_000, t, source="m") for t in (0,)] +
                   [reading(Quantity.ENERGY_MWH, 1000 + t * 555, t, source="m") for t in range(0, 60, 10)])
    res.append(m.close(Now(T.T0_MONO + 55 * S, T.T0_WALL + 55, True, T.BOOT)))
    m2 = register_meter(state=m.snapshot())
    res2 = feed_all(m2, [reading(Quantity.ENERGY_MWH, 1000 + 50 * 555 + 9999, 2, source="m", boot="boot-2"),
                         reading(Quantity.ENERGY_MWH, 1000 + 50 * 555 + 9999 + 50, 12, source="m", boot="boot-2")])
    gap = next(r for r in records(res2) if r.kind == RecordKind.GAP)
    assert gap.reason == "restart" and gap.energy_mwh == 9999 and gap.duration_ms == 0
    assert gap.extra["prev_boot_id"] == T.BOOT and gap.register_start_mwh == 1000 + 50 * 555
    m2_close = m2.close(Now(T.T0_MONO + 12 * S, T.T0_WALL + 12, True, "boot-2"))
    assert total(res) + total(res2) + total([m2_close]) == 50 * 555 + 9999 + 50


def test_a_use_that_goes_on_across_a_reboot_has_one_summary_on_the_clock_of_the_boot_it_ended_in() -> None:
    """Monotonic stamps of two boots do not compare: the summary's start is where the use resumed in its last boot.

    (Found by the register property test: the summary took its start from boot 1 and its end from boot 2.)
    """
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("power", "p"))
    before = [reading(Quantity.POWER_MW, 2_000_000, t, source="p") for t in range(0, 31, 5)]
    # The Pi reboots at 31 s while the kettle keeps boiling; the new boot's monotonic clock starts near zero.
    after = [Reading("p", 2 * S + t * S, T.T0_WALL + 40 + t, "boot-2", Quantity.POWER_MW, p)
             for t, p in ((0, 2_000_000), (10, 2_000_000), (20, 0), (30, 0), (40, 0))]
    res = feed_all(m, before + after)
    cycles = [r for r in records(res) if r.kind == RecordKind.CYCLE]
    assert len(cycles) == 1
    c = cycles[0]
    segments = [r for r in partition(res) if r.cycle_id == c.cycle_id]
    assert {r.boot_id for r in segments if r.function == "boil"} == {T.BOOT, "boot-2"}
    assert c.boot_id == "boot-2" and c.extra["start_boot_id"] == T.BOOT
    assert c.t_start_mono_ns == min(r.t_start_mono_ns for r in segments if r.boot_id == "boot-2")
    assert c.t_end_mono_ns == segments[-1].t_end_mono_ns >= c.t_start_mono_ns
    assert c.t_start_wall == segments[0].t_start_wall  # the wall interval covers the whole use
    assert c.duration_ms == sum(r.duration_ms for r in segments)
    assert c.cycle_energy_mwh == sum(r.energy_mwh for r in segments)


def test_a_signal_moves_no_integration_so_a_silent_source_ends_at_its_last_reading() -> None:
    """Power is integrated between readings of the energy source only. A signal between them (changed or repeated)
    decides, but the energy after the last reading is not the function's when no reading follows: stale by the
    stop, the function ends at the reading at 0 s. (Before issue 9 a signal integrated the last power up to its
    own moment — 1 mWh here — extending the function into a silence; the issue calls that wrong.)"""
    for second_mode in ("heat", "cool"):
        m = ApplianceMeter("ac", builtin_profile("air_conditioner"), energy=EnergySpec("power", "p", max_gap_s=60))
        res = feed_all(m, [reading(Quantity.SIGNAL, "heat", 0, source="ir", signal="mode"),
                           reading(Quantity.POWER_MW, 20_000, 0, source="p"),
                           reading(Quantity.SIGNAL, second_mode, 0.18, source="ir", signal="mode")])
        res.append(m.close(Now(T.T0_MONO + 61_180_000_000, T.T0_WALL + 61.18, True, T.BOOT)))  # stale by then
        assert total(res) == 0, second_mode
        assert max(r.t_end_mono_ns for r in partition(res)) == T.T0_MONO, second_mode


def test_a_signal_between_readings_switches_at_its_moment_once_the_next_reading_comes() -> None:
    """Readings every 10 s; the mode turns to heat at 94 s. The switch waits for the reading at 100 s (which shows
    the power up to then), and the boundary falls at 94 s: cool has 800 W for 94 s."""
    m = ApplianceMeter("ac", builtin_profile("air_conditioner"), energy=EnergySpec("power", "p", max_gap_s=60))
    feed_all(m, [reading(Quantity.SIGNAL, "cool", 0, source="ir", signal="mode"),
                 *(reading(Quantity.POWER_MW, 800_000, t, source="p") for t in range(0, 100, 10))])
    assert not m.feed(reading(Quantity.SIGNAL, "heat", 94, source="ir", signal="mode")).records
    res = feed_all(m, [reading(Quantity.POWER_MW, 900_000, t, source="p") for t in (100, 110, 120, 130)])
    (cool,) = records(res)  # heat's dwell (cool's min_off 30 s) confirmed at 130 s, back to the mark at 94 s
    assert (cool.function, cool.t_start_mono_ns, cool.t_end_mono_ns) == ("cool", T.T0_MONO, T.T0_MONO + 94 * S)
    assert cool.energy_mwh == 800_000 * 94 // 3600


def test_power_gap_beyond_max_gap_integrates_nothing() -> None:
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("power", "p", max_gap_s=30))
    rs = [reading(Quantity.POWER_MW, 2_000_000, t, source="p") for t in (0, 10, 20, 100, 110)]
    res = [*feed_all(m, rs), m.close(Now(T.T0_MONO + 110 * S, T.T0_WALL + 110, True, T.BOOT))]
    gap = [r for r in records(res) if r.kind == RecordKind.GAP]
    assert len(gap) == 1 and gap[0].reason == "max_gap" and gap[0].energy_mwh == 0
    assert gap[0].duration_ms == 80_000
    assert total(res) == 2_000_000 * 30 // 3600


def test_stale_source_is_closed_by_tick() -> None:
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("power", "p", max_gap_s=30))
    feed_all(m, [reading(Quantity.POWER_MW, 2_000_000, t, source="p") for t in (0, 10)])
    res = m.tick(Now(T.T0_MONO + 50 * S, T.T0_WALL + 50, True, T.BOOT))
    assert next(e.kind for e in res.events) == "source_stale"
    assert [r.t_end_mono_ns for r in res.records if r.kind == RecordKind.FUNCTION] == [T.T0_MONO + 10 * S]


def test_interim_slices_every_interim_s_and_the_closing_record_covers_the_rest() -> None:
    m = ApplianceMeter("oven", builtin_profile("oven"), energy=EnergySpec("power", "p"), interim_s=60)
    rs = [reading(Quantity.POWER_MW, 2_000_000, t, source="p") for t in range(0, 200, 10)]
    res = [*feed_all(m, rs), m.close(Now(T.T0_MONO + 190 * S, T.T0_WALL + 190, True, T.BOOT))]
    kinds = [(r.kind, r.duration_ms) for r in partition(res)]
    assert kinds == [(RecordKind.INTERIM, 60_000), (RecordKind.INTERIM, 60_000), (RecordKind.INTERIM, 60_000),
                     (RecordKind.FUNCTION, 10_000)]


def test_time_status_is_u_when_the_clock_was_not_synced_at_either_end() -> None:
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("power", "p"))
    res = feed_all(m, [reading(Quantity.POWER_MW, 0, 0, source="p", synced=False),
                       reading(Quantity.POWER_MW, 2_000_000, 10, source="p", synced=True),
                       reading(Quantity.POWER_MW, 0, 200, source="p", synced=True)])
    res.append(m.close(Now(T.T0_MONO + 300 * S, T.T0_WALL + 300, True, T.BOOT)))
    status = [(r.function, str(r.time_status)) for r in partition(res)]
    assert status[0] == ("standby", "U") and all(s == "S" for _, s in status[1:])


class RecordingPolicy:
    """A small real Policy: 1 minor unit per Wh, boil not entitled."""

    def __init__(self) -> None:
        self.priced: list[UsageRecord] = []

    def price(self, record: UsageRecord) -> None:
        record.tariff_id, record.tariff_version, record.currency = "flat", 1, "EUR"
        record.cost_minor = record.energy_mwh // 1000
        self.priced.append(record)

    def allows(self, appliance: str, function: str, t_wall: float) -> Decision:
        return Decision(entitled=function != "boil", reason="no kettle plan" if function == "boil" else "")

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def test_policy_prices_every_record_and_decides_at_each_start() -> None:
    pol = RecordingPolicy()
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("power", "p"), policy=pol)
    res = T.run(m, T.build(T.kettle_script(), source="p"))
    assert pol.priced == records(res) and all(r.currency == "EUR" for r in records(res))
    starts = [e for r in res for e in r.events if e.kind == "function_started"]
    assert all(e.decision is not None for e in starts)
    boil = [e for e in starts if e.function == "boil"]
    assert boil and all(not e.decision.entitled for e in boil if e.decision)
    assert "not entitled: no kettle plan; recorded and flagged" in boil[0].message
    assert any(r.function == "boil" and r.energy_mwh > 0 for r in records(res))  # still recorded


def test_drafts_carry_usage_and_lifecycle_types() -> None:
    m = register_meter(wrap_mwh=1000)
    res = feed_all(m, [reading(Quantity.POWER_MW, 1_000_000, 0, source="m"),
                       reading(Quantity.ENERGY_MWH, 990, 0, source="m"),
                       reading(Quantity.ENERGY_MWH, 5, 30, source="m")])
    drafts = [d for r in res for d in r.drafts("urn:koto:appliance:dryer")]
    assert [d.type for d in drafts] == [LIFECYCLE_TYPE]
    d = drafts[0]
    assert d.data["event"] == "register_wrap" and d.data["appliance"] == "dryer" and d.subject.endswith("dryer")
    res2 = m.close(Now(T.T0_MONO + 30 * S, T.T0_WALL + 30, True, T.BOOT))
    assert {d.type for d in res2.drafts("s")} == {USAGE_TYPE}


def test_snapshot_is_plain_strings_and_integers() -> None:
    m = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec("power", "plug"))
    T.run(m, T.build(T.washer_script(), source="plug")[:300], close=False)

    def check(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                assert isinstance(k, str)
                check(v)
        elif isinstance(o, list):
            for v in o:
                check(v)
        else:
            assert type(o) in (str, int), o

    check(m.snapshot())


def test_only_the_configured_channel_of_a_multi_channel_meter_is_metered() -> None:
    """An SDM630 reports each phase beside the total; an SDM120 its import register beside its total register.
    Feeding them all to one appliance must neither triple-count power nor mix two registers."""
    from dataclasses import replace

    m = ApplianceMeter("dryer", builtin_profile("tumble_dryer"), energy=EnergySpec("register", "sdm630"))
    base = Reading("sdm630", 1 * S, 1_764_460_800.0, "boot", Quantity.ENERGY_MWH, 5_000_000)
    items: list[Reading] = []
    for i in range(0, 601, 10):  # ten minutes at 2.4 kW total, 0.8 kW on each phase
        t = (1 + i) * S
        wall = 1_764_460_800.0 + i
        total = replace(base, t_mono_ns=t, t_wall=wall, quantity=Quantity.POWER_MW, value=2_400_000)
        items.append(total)
        items += [replace(total, signal=f"L{p}", value=800_000) for p in (1, 2, 3)]
        reg = 5_000_000 + 2_400_000 * i // 3600
        items.append(replace(base, t_mono_ns=t, t_wall=wall, value=reg))
        items.append(replace(base, t_mono_ns=t, t_wall=wall, value=9_000_000 + reg, signal="import"))
    res = [m.feed(r) for r in items]
    res.append(m.close(Now(601 * S, 1_764_460_800.0 + 600, True, "boot")))
    part = partition(res)
    assert sum(r.energy_mwh for r in part) == 2_400_000 * 600 // 3600
    assert max(r.peak_power_mw for r in part) == 2_400_000
    assert m.rejected == {}
    assert m.ignored == 61 * 4  # three phases and the import register, at every step
