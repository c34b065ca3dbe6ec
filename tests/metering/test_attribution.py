"""The built-in profiles against the labelled trace suite (reduced: one or two programmes per machine), replayed
through the real meter: >= 90 % of the energy to the right function and the uses exact, on every trace. A profile
edit that breaks a machine fails here, naming the trace and where its energy went. The full suite and the baseline
are in `bench/attribution.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.profile import builtin_profile, load_profile
from tests.support.appliance_traces import LabelledTrace, suite, washer
from tests.support.attribution import TARGET_ENERGY, baseline, principal_functions, replay, score

TRACES = suite(reduced=True)
PRINCIPAL = principal_functions(TRACES)


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_each_trace_meets_the_attribution_target(trace: LabelledTrace) -> None:
    s = score(trace, replay(trace, builtin_profile(trace.profile)))
    assert s.energy_right >= TARGET_ENERGY, f"{trace.name}: {s.energy_right:.1%} right; wrong: {s.wrong}"
    assert s.uses == s.true_uses, f"{trace.name}: {s.uses} uses counted, {s.true_uses} true"


def test_the_suite_covers_every_builtin_with_several_machines() -> None:
    machines: dict[str, set[str]] = {}
    for t in TRACES:
        machines.setdefault(t.profile, set()).add(t.machine)
    assert set(machines) == {"washing_machine", "dishwasher", "tumble_dryer", "fridge_freezer", "oven", "kettle",
                             "air_conditioner"}
    assert all(len(m) >= 3 for m in machines.values()), machines


def test_labels_and_uses_are_consistent() -> None:
    for t in TRACES:
        assert len(t.watts) == len(t.labels) and t.uses
        assert all(0 <= a < b <= len(t.watts) for a, b in t.uses)
        assert all(t.labels[i] != "standby" or t.watts[i] < 5 for i in range(len(t.watts)))


def test_the_old_washer_profile_fails_where_the_issue_said() -> None:
    """The scorer can fail: the profile before the revision bills a direct-drive machine's ~50 W tumbling as fill
    and a 240 W spin as wash."""
    old = load_profile(Path(__file__).parent / "data" / "detector_washer.toml")
    s = score(washer("directdrive-9kg", "quickcold"), replay(washer("directdrive-9kg", "quickcold"), old))
    assert s.energy_right < TARGET_ENERGY and s.wrong.get("wash->fill", 0) > 0.05


def test_the_revised_profiles_beat_a_single_threshold_on_the_washer() -> None:
    t = washer("old-6kg", "cotton40")
    assert score(t, replay(t, builtin_profile("washing_machine"))).energy_right > \
        baseline(t, PRINCIPAL["washing_machine"]).energy_right + 0.1
