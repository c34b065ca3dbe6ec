"""The built-in profiles on real appliance power traces: tracebase excerpts (tests/data/traces, ODbL), several
machines per kind, replayed through the real meter at 1 Hz as the daemon polls a plug (power, and power plus the
energy register).

Real traces carry no function labels, so this claims what the power shows unambiguously: every use counted exactly
(one programme per washer, dryer and dishwasher excerpt; each boil; each compressor run), at least 90 % of the energy
drawn at 1 kW or more billed to the heating function, no compressor start billed as a fridge's defrost, and every
watt-second billed somewhere (power: the integral of the readings). The per-trace figures are printed by
`.venv/bin/python bench/attribution.py --real` (and quoted in docs/profiles.md).
"""

from __future__ import annotations

import pytest

from tests.support.real_traces import load, names, run


def test_the_excerpts_are_there_and_cover_the_kinds() -> None:
    kinds = {load(n).profile for n in names()}
    assert kinds >= {"washing_machine", "tumble_dryer", "dishwasher", "kettle", "fridge_freezer"}
    assert all(len({n.split("-")[1] for n in names() if load(n).profile == k}) >= 2 for k in kinds)  # machines


@pytest.mark.parametrize("mode", ["power", "register"])
@pytest.mark.parametrize("name", names())
def test_a_real_trace_is_billed_by_its_profile(name: str, mode: str) -> None:
    tr, s = run(name, mode)
    assert s.uses == s.true_uses, s
    if s.heater_right is not None:
        assert s.heater_right >= 0.90, s
    if tr.profile == "fridge_freezer":  # (none of these excerpts has a defrost)
        assert "defrost" not in s.shares, s
    assert "(gap)" not in s.shares, s
    if mode == "power":  # everything the readings show is billed, to the mWh of each record's rounding
        assert abs(s.billed_mwh - s.true_mwh) <= 1 + max(tr.watts) / 3.6, s
