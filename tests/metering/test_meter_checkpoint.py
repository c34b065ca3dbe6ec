"""Checkpoints written by earlier versions of the meter restore to exactly the behaviour they had.

`data/meter_v1_checkpoints.json` holds version 1 checkpoints captured from the code at 60b5c2a (mid-use with a held
slice, a mark, a pending gap, after a clean stop, pulses without power samples...) together with every result that
code produced after restoring each one and carrying on. The meter of today must produce the same results, step by
step, from the same checkpoints — except where a scenario's `amended` says which deliberate change of behaviour
edited its expected results, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from koto.clock import Now
from koto.errors import FieldError, KotoError
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter
from metering.meter.checkpoint import VERSION, Checkpoint
from metering.meter.codec import check_schema
from metering.meter.state import MeterState
from metering.profile import load_profile
from tests.support.meter_outputs import encode_result

V1 = json.loads((Path(__file__).parent / "data" / "meter_v1_checkpoints.json").read_text())
SCENARIOS = {s["name"]: s for s in V1["scenarios"]}
# The built-in profiles as they were when the scenarios were recorded: tuning a built-in must not change what a
# restored checkpoint is checked against.
PROFILES_V1 = Path(__file__).parent / "data" / "profiles_v1"


def decode_step(row: list[Any], boot: str) -> tuple[str, Reading | Now]:
    op, mono, wall, *rest = row
    extra: dict[str, Any] = rest.pop() if rest and isinstance(rest[-1], dict) else {}
    synced = bool(extra.get("synced", 1))
    if op in ("tick", "close"):
        return op, Now(mono, float(wall), synced, extra.get("boot", boot))
    q, value = rest
    return op, Reading(extra.get("source", "s"), mono, float(wall), extra.get("boot", boot), Quantity(q), value,
                       wall_synced=synced, signal=extra.get("signal", ""))


def meter_for(s: dict[str, Any], state: dict[str, Any] | None) -> ApplianceMeter:
    return ApplianceMeter(s["appliance"], load_profile(PROFILES_V1 / f"{s['profile']}.toml"),
                          energy=EnergySpec(**s["energy"]),
                          interim_s=s["interim_s"], state=state)


def run_steps(m: ApplianceMeter, s: dict[str, Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for i, row in enumerate(s["steps"]):
        op, it = decode_step(row, s["boot"])
        if op == "feed":
            assert isinstance(it, Reading)
            res = m.feed(it)
        else:
            assert isinstance(it, Now)
            res = m.close(it) if op == "close" else m.tick(it)
        if res:
            out.append([i, encode_result(res)])
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_v1_checkpoint_restores_to_the_same_behaviour(name: str) -> None:
    s = SCENARIOS[name]
    m = meter_for(s, json.loads(json.dumps(s["snapshot"])))
    assert run_steps(m, s) == s["expected"]
    after = s["after"]
    assert (m.function, m.power_mw, dict(m.rejected), m.readings) == (
        after["function"], after["power_mw"], after["rejected"], after["readings"])


def test_a_v1_checkpoint_is_rewritten_as_the_current_version() -> None:
    s = SCENARIOS["register_held_mark_cycle"]
    m = meter_for(s, json.loads(json.dumps(s["snapshot"])))
    snap = m.snapshot()
    assert snap["v"] == VERSION == 4
    assert meter_for(s, json.loads(json.dumps(snap))).snapshot() == snap


def test_the_checkpoint_is_declared_in_types_the_codec_understands() -> None:
    check_schema(Checkpoint)
    with pytest.raises(TypeError, match="ambiguous"):
        check_schema(_Ambiguous)


@dataclass
class _Ambiguous:
    name: str | None


def test_a_checkpoint_of_another_version_or_energy_kind_starts_fresh() -> None:
    s = SCENARIOS["register_held_mark_cycle"]
    snap = meter_for(s, json.loads(json.dumps(s["snapshot"]))).snapshot()
    for state in ({**snap, "v": 5}, {**snap, "v": 0}, {**snap, "kind": "pulses"}, {}):
        m = meter_for(s, state)
        assert m.readings == 0 and m.state == MeterState() and m.last_raw is None


def test_a_damaged_checkpoint_is_an_error_naming_the_key_never_a_half_restored_meter() -> None:
    s = SCENARIOS["register_pending_stale_gap"]
    snap = meter_for(s, json.loads(json.dumps(s["snapshot"]))).snapshot()

    def damaged(path: str, value: Any) -> dict[str, Any]:
        state = json.loads(json.dumps(snap))
        *parents, last = path.split(".")
        node = state
        for k in parents:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
        return state

    cases = [("meter.cursor.wall", None, "missing"), ("meter.cursor.wall", 1.5, "a number as a string"),
             ("meter.cursor.synced", 2, "0 or 1"), ("meter.gap.reason", "outage", "one of restart, reboot"),
             ("meter.held", {}, "a list"), ("meter.counters.readings", "7", "an integer"),
             ("meter.extra", 1, "unknown key")]
    for path, value, problem in cases:
        with pytest.raises(FieldError) as e:
            meter_for(s, damaged(path, value))
        assert e.value.file == "checkpoint of washer" and e.value.key == path and problem in e.value.problem, e.value
        assert isinstance(e.value, KotoError) and isinstance(e.value, ValueError)


def test_a_v3_checkpoint_restores_with_every_power_read_as_measured() -> None:
    """Version 3 did not mark a bare counter's power as a bound (`Cursor.bounded`, `Deferred.bound`): it restores
    with both unset, which is how version 3 treated them, and carries on as the meter that wrote it would."""
    s = SCENARIOS["pulses_alone_mid_use"]
    m = meter_for(s, json.loads(json.dumps(s["snapshot"])))
    for row in s["steps"]:  # to the first decision a tick took on a bound, deferred to the next count
        op, it = decode_step(row, s["boot"])
        assert op in ("feed", "tick")
        if isinstance(it, Reading):
            m.feed(it)
        else:
            m.tick(it)
        if any(d.bound for d in m.state.deferred):
            break
    snap = m.snapshot()
    assert snap["meter"]["deferred"] and snap["meter"]["cursor"]["bounded"] == 1
    v3 = json.loads(json.dumps(snap))
    v3["v"] = 3
    del v3["meter"]["cursor"]["bounded"]
    for d in v3["meter"]["deferred"]:
        del d["bound"]
    restored = meter_for(s, v3).snapshot()
    assert restored["v"] == VERSION
    assert restored["meter"]["cursor"]["bounded"] == 0
    assert all(d["bound"] == 0 for d in restored["meter"]["deferred"])
    restored["meter"]["cursor"]["bounded"] = 1
    for d, before in zip(restored["meter"]["deferred"], snap["meter"]["deferred"], strict=True):
        d["bound"] = before["bound"]
    assert restored == snap  # nothing else changed on the way
