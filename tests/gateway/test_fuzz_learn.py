"""Learn mode on arbitrary recordings: any trace of rests, runs, pauses and spikes on any built-in profile either
gives a rule that works — it parses back from the file it is saved as, and replayed it finds its own run — or is
refused with a reason; never anything else (no crash, no profile the gateway could not load at its next start)."""

from __future__ import annotations

import tomllib

from hypothesis import given
from hypothesis import strategies as st

from gateway.learn import MIN_DETECTED, LearnRefused, derive_rule, learned_toml
from gateway.power_log import TracePoint
from gateway.profile_replay import replay
from metering.profile import BUILTIN_NAMES, builtin_profile, parse_profile
from tests.support.fuzzing import fuzz_settings

T0 = 1_764_921_600.0
LEVELS = [0.0, 0.3, 0.5, 1.0, 2.5, 4.0, 8.0, 15.0, 35.0, 70.0, 150.0, 240.0, 500.0, 900.0, 1200.0, 2000.0, 2200.0,
          3000.0]

segments = st.lists(st.tuples(st.integers(1, 240), st.sampled_from(LEVELS), st.floats(0, 0.05)), min_size=1,
                    max_size=12)


def _trace(segs: list[tuple[int, float, float]], step: float) -> list[TracePoint]:
    out: list[TracePoint] = []
    t = T0
    for n, watts, wobble in segs:
        for i in range(n):
            w = watts * (1 + wobble * ((i * 7919) % 11 - 5) / 5)
            out.append(TracePoint(round(t, 1), round(max(0.0, w) * 1000)))
            t += step
    return out


@fuzz_settings(100)  # ~10 s here; make fuzz runs 100,000
@given(segs=segments, profile=st.sampled_from(BUILTIN_NAMES),
       function=st.sampled_from(["boil", "heat", "keep_warm", "cool", "spin", "descale"]),
       step=st.sampled_from([1.0, 2.0, 5.0]), history=st.booleans())
def test_a_recording_gives_a_working_rule_or_a_reason(segs: list[tuple[int, float, float]], profile: str,
                                                       function: str, step: float, history: bool) -> None:
    base = builtin_profile(profile)
    rec = _trace(segs, step)
    hist = [TracePoint(p.t - 20_000, p.power_mw) for p in rec] if history else []
    try:
        learned = derive_rule(base, function, rec, appliance="a", history=hist)
    except LearnRefused as e:
        assert e.reason and "\n" not in e.reason
        return
    text = learned_toml(learned, name="fuzzed", when=T0)
    again = parse_profile(tomllib.loads(text), file="fuzzed.toml")
    assert again.function_names() == learned.profile.function_names()
    assert learned.detected >= MIN_DETECTED
    run = [p for p in rec if learned.levels.start <= p.t <= learned.levels.end]
    e = replay(run, again).energy_by_function()
    assert e.get(function, 0) >= MIN_DETECTED * sum(e.values())  # the saved file finds the run, as checked
    others = {f.name for f in base.functions} - {function}
    assert others <= set(again.function_names())  # no function of the profile was dropped
