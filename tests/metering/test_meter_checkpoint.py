"""Checkpoints written by earlier versions of the meter restore to exactly the behaviour they had.

`data/meter_v1_checkpoints.json` holds version 1 checkpoints captured from the code at 60b5c2a (mid-use with a held
slice, a mark, a pending gap, after a clean stop, pulses without power samples...) together with every result that
code produced after restoring each one and carrying on. The meter of today must produce the same results, step by
step, from the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter, FeedResult
from metering.profile import builtin_profile
from metering.records import UsageRecord

V1 = json.loads((Path(__file__).parent / "data" / "meter_v1_checkpoints.json").read_text())
SCENARIOS = {s["name"]: s for s in V1["scenarios"]}


def _plain(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None or type(v) in (int, str):
        return v
    return str(v)


def encode_result(res: FeedResult) -> dict[str, Any]:
    """What a result says, as the fixture records it: every event field, every record field, every note's draft."""
    events = [[e.kind, e.appliance, e.function, e.power_mw, repr(e.t_wall), e.message, _plain(e.decision)]
              for e in res.events]
    items = [{"type": "UsageRecord", **{f.name: _plain(getattr(i, f.name)) for f in dataclasses.fields(i)}}
             if isinstance(i, UsageRecord) else
             {"type": "LifecycleNote", **_plain(dataclasses.asdict(i.draft("subject", res.appliance)))}
             for i in res.items]
    return {"events": events, "items": items}


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
    return ApplianceMeter(s["appliance"], builtin_profile(s["profile"]), energy=EnergySpec(**s["energy"]),
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
