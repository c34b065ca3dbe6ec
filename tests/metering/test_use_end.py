"""A use ends where its power fell, not where the end dwell confirmed it.

A dishwasher's end dwell is 30 minutes (drying pauses at 0-2 W are that long) and a machine left on at its
electronics' level ends its use after an hour: the use's summary still ends at the moment the programme's power
fell, and what came after it (standby, the machine left on) is recorded as no use's. A pause inside the programme
(the power falls and rises again before the dwell is over) stays in the use and makes no record of its own. Energy
is conserved exactly whatever the tail does, on every kind of source, and across a checkpoint taken in the tail.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from koto.clock import Now
from koto.reading import Quantity
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter
from metering.profile import builtin_profile
from metering.records import PARTITION_KINDS, RecordKind, UsageRecord
from tests.support import traces as T

S = 1_000_000_000
# A dishwasher: wash, heat, a 10-minute drying pause at 1 W, the last pump-out, then standby at 0.5 W for 40 min.
DISHWASHER = T.Script([(60, 0.5), (600, 60.0), (900, 2000.0), (600, 60.0), (600, 1.0), (300, 30.0),
                       (2400, 0.5)], cycles=1)
PROGRAMME_END_S = 60 + 600 + 900 + 600 + 600 + 300  # where the last pump-out stops


def meter(kind: str = "power", state: dict[str, Any] | None = None) -> ApplianceMeter:
    spec = {"power": EnergySpec(source="plug", kind="power"),
            "register": EnergySpec(source="plug", kind="register", max_gap_s=60),
            "pulses": EnergySpec(source="plug", kind="pulses", imp_per_kwh=10_000, max_gap_s=900)}[kind]
    return ApplianceMeter("dishwasher", builtin_profile("dishwasher"), energy=spec, interim_s=900,
                          idle_interim_s=900, state=state)


def items_for(kind: str, script: T.Script = DISHWASHER) -> list[T.Item]:
    if kind == "register":
        return T.build(script, source="plug", register=True, register_every_s=5.0)
    if kind == "pulses":
        return T.build(script, source="plug", pulses=10_000, power=False)
    return T.build(script, source="plug")


def records(results: list[Any]) -> list[UsageRecord]:
    return [it for res in results for it in res.items if isinstance(it, UsageRecord)]


def second(t_ns: int) -> float:
    return (t_ns - T.T0_MONO) / S


def test_the_use_ends_where_the_programme_power_fell_not_where_the_30_minute_dwell_confirmed_it() -> None:
    recs = records(T.run(meter(), items_for("power")))
    (cycle,) = [r for r in recs if r.kind == RecordKind.CYCLE]
    assert second(cycle.t_start_mono_ns) == 60
    assert second(cycle.t_end_mono_ns) == PROGRAMME_END_S  # not 30 minutes later
    mine = [r for r in recs if r.cycle_id == cycle.cycle_id and r.kind in PARTITION_KINDS]
    assert max(r.t_end_mono_ns for r in mine) == cycle.t_end_mono_ns
    assert cycle.cycle_energy_mwh == sum(r.energy_mwh for r in mine)
    after = [r for r in recs if r.kind in PARTITION_KINDS and second(r.t_start_mono_ns) >= PROGRAMME_END_S]
    assert after and all(r.cycle_id == "" for r in after)  # standby after the programme is no use's


def test_a_drying_pause_inside_the_programme_stays_in_the_use_and_makes_no_record_of_its_own() -> None:
    recs = records(T.run(meter(), items_for("power")))
    (cycle,) = [r for r in recs if r.kind == RecordKind.CYCLE]
    pause = (60 + 600 + 900 + 600, 60 + 600 + 900 + 600 + 600)
    inside = [r for r in recs if r.kind in PARTITION_KINDS and second(r.t_start_mono_ns) < pause[1]
              and second(r.t_end_mono_ns) > pause[0]]
    assert inside and all(r.cycle_id == cycle.cycle_id for r in inside)
    # the same programme without the pause makes as many records (the interim every 15 min aside)
    flat = T.Script([(60, 0.5), (600, 60.0), (900, 2000.0), (600, 60.0), (600, 60.0), (300, 30.0), (2400, 0.5)])
    assert len(recs) <= len(records(T.run(meter(), items_for("power", flat)))) + 1


def test_many_short_pauses_make_no_records() -> None:
    """A washer's tumbling pauses fall below the end level every few seconds: the fall is only marked."""
    tumble = [(12.0, 180.0), (4.0, 1.0)] * 60
    script = T.Script([(60, 0.5), (120, 2000.0), *tumble, (600, 0.5)])
    m = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=EnergySpec(source="plug", kind="power"),
                       interim_s=900, idle_interim_s=900)
    recs = records(T.run(m, T.build(script, source="plug")))
    assert len([r for r in recs if r.kind == RecordKind.CYCLE]) == 1
    assert len(recs) < 12, [(r.kind, r.function, second(r.t_start_mono_ns)) for r in recs]


def test_energy_is_conserved_exactly_on_every_kind_of_source() -> None:
    for kind in ("power", "register", "pulses"):
        its = items_for(kind)
        recs = records(T.run(meter(kind), its))
        part = [r for r in recs if r.kind in PARTITION_KINDS]
        (cycle,) = [r for r in recs if r.kind == RecordKind.CYCLE]
        assert cycle.cycle_energy_mwh == sum(r.energy_mwh for r in part if r.cycle_id == cycle.cycle_id), kind
        # (a bare counter's power is only a bound after its last pulse, 100 mWh over the time since: 2.5 W at 144 s,
        # and the use ends at the first record boundary from there)
        late = 200 if kind == "pulses" else 5
        assert second(cycle.t_end_mono_ns) <= PROGRAMME_END_S + late, (kind, second(cycle.t_end_mono_ns))
        if kind == "register":
            last = [it for it in its if not isinstance(it, Now)][-1]
            assert sum(r.energy_mwh for r in part) == last.value  # the register's whole advance, to the mWh
            assert all(a.register_end_mwh == b.register_start_mwh for a, b in pairwise(part))
        if kind == "pulses":
            last = [it for it in its if not isinstance(it, Now)][-1]
            assert last.quantity == Quantity.PULSES
            assert sum(r.energy_mwh for r in part) == last.value * 100  # 10,000 imp/kWh: 100 mWh a pulse


def test_a_checkpoint_taken_in_the_tail_resumes_to_the_same_records() -> None:
    for kind in ("power", "register"):
        its = items_for(kind)
        whole = records(T.run(meter(kind), its))
        cut = next(i for i, it in enumerate(its) if second(it.mono_ns if isinstance(it, Now) else it.t_mono_ns)
                   >= PROGRAMME_END_S + 1000)  # in the tail, after an interim slice there waited
        first = meter(kind)
        head = records(T.run(first, its[:cut], close=False))
        assert first.state.tail or kind == "register", kind  # (the tail's records wait in the checkpoint)
        rest = records(T.run(meter(kind, first.snapshot()), its[cut:]))
        assert [r.data() for r in head + rest] == [r.data() for r in whole], kind


def test_a_source_gone_silent_in_the_tail_leaves_its_records_to_the_use() -> None:
    """Coverage stopped inside the low spell: the records so far go out as the use's (nothing waits across a gap),
    and the use ends where its dwell confirms it, as before."""
    its = [it for it in items_for("power")
           if not (PROGRAMME_END_S + 950 <= second(it.mono_ns if isinstance(it, Now) else it.t_mono_ns)
                   < PROGRAMME_END_S + 1400)]  # 450 s: beyond max_gap_s
    m = meter()
    recs = records(T.run(m, its))
    gaps = [r for r in recs if r.kind == RecordKind.GAP]
    (cycle,) = [r for r in recs if r.kind == RecordKind.CYCLE]
    assert gaps and second(cycle.t_end_mono_ns) > PROGRAMME_END_S
    assert not m.state.tail and m.state.fall is None
