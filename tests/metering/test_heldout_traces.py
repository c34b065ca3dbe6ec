"""The built-in profiles on real traces they were NOT tuned on: tests/data/heldout_traces (tracebase devices the
tuning never saw, ODbL; REFIT households, another plug at 3-8 s, CC BY 4.0), chosen by a fixed power-only rule
(extract.py there, committed before any excerpt was scored), replayed at 1 Hz like the tuned twelve, each continued
at its final rest level for an hour (tests/support/real_traces.py: in a home the machine stays at rest).

Scored exactly as tests/metering/test_real_traces.py scores those (tests/support/real_traces.py): every use counted
exactly (one programme per washer, dryer and dishwasher excerpt; each boil; each compressor run), at least 90 % of
the energy drawn at 1 kW or more billed to the heating function, no compressor run billed as a fridge's defrost,
and every watt-second billed somewhere. Where a built-in profile misses, the case is a strict xfail naming why; the
figures and what would fix each miss are in docs/testing.md ("Held-out real traces"). This file claims nothing
about the profiles beyond these excerpts: it is the check of how far the tuning carries to other machines. Six
excerpts missed with the version 3 profiles (uses that never ended, or one dishwasher programme counted twice);
the version 4 washer and dishwasher rules were changed with their figures in view, so on those six this is no
longer a held-out check.
"""

from __future__ import annotations

import pytest

from tests.support.real_traces import HELDOUT, TRACES, load, names, run

# excerpt -> why the built-in profile misses its target there (the same with power and with power plus register)
MISSES = {
    "fridge-76C07F-2012-06-11": "not the profile: the excerpt ends 59 s after the last compressor run (the selection "
    "rule's 60 s tail), inside the cycle's 60 s end_for_s, so that run's use is still open (2 of 3); its last 10 "
    "minutes are not at rest, so it is not continued either",
}
MODES = ("power", "register")


def _cases() -> list[object]:
    return [pytest.param(n, m, id=f"{n}-{m}",
                         marks=[pytest.mark.xfail(strict=True, reason=MISSES[n])] if n in MISSES else [])
            for m in MODES for n in names(HELDOUT)]


def test_the_heldout_excerpts_cover_the_kinds_on_machines_not_tuned_on() -> None:
    held = {(load(n, HELDOUT).profile, n.split("-")[1]) for n in names(HELDOUT)}
    tuned = {(load(n).profile, n.split("-")[1]) for n in names(TRACES)}
    assert not held & tuned
    assert {p for p, _ in held} == {"washing_machine", "tumble_dryer", "dishwasher", "kettle", "fridge_freezer"}
    assert any(m.startswith("REFIT") for _, m in held)  # a second data set: another plug and sample rate
    assert set(MISSES) <= set(names(HELDOUT))


@pytest.mark.parametrize(("name", "mode"), _cases())
def test_a_heldout_trace_is_billed_by_its_profile(name: str, mode: str) -> None:
    tr, s = run(name, mode, HELDOUT)
    assert s.uses == s.true_uses, s
    if s.heater_right is not None:
        assert s.heater_right >= 0.90, s
    if tr.profile == "fridge_freezer":  # (no excerpt holds 150-450 W for over 2 minutes: a defrost lasts 10-30)
        assert "defrost" not in s.shares, s
    assert "(gap)" not in s.shares, s
    if mode == "power":  # everything the readings show is billed, to the mWh of each record's rounding
        assert abs(s.billed_mwh - s.true_mwh) <= 1 + max(tr.watts) / 3.6, s
