"""Learn mode's core: a recorded run of a function gives a band and dwell rule that detects the function when another
run is replayed, without taking readings from the appliance's other functions; what it cannot learn it refuses,
saying why; what it learns is saved in the state folder (profiles/ and household.toml), never in the config."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.learn import LearnRefused, LearnSession, cut_recording, derive_rule, save_learned
from gateway.learn_files import set_override
from gateway.power_log import TracePoint
from gateway.profile_replay import replay
from metering.profile import Profile, builtin_profile, load_profile
from tests.support.appliance_traces import aircon, kettle, oven

T0 = 1_764_921_600.0


def _points(watts: tuple[float, ...] | list[float], t0: float = T0) -> list[TracePoint]:
    return [TracePoint(t0 + i, round(w * 1000)) for i, w in enumerate(watts)]


def _keep_warm(seed: int, t0: float = T0, cycles: int = 10) -> list[TracePoint]:
    """A kettle's keep-warm: a 70 W element switched by its thermostat (on 15-25 s, off 30-50 s), from rest to rest."""
    rng = random.Random(seed)
    w: list[float] = []

    def hold(n: int, watts: float) -> None:
        w.extend(round(max(0.0, watts * (1 + rng.gauss(0, 0.015)) + rng.uniform(-0.3, 0.3)), 1) for _ in range(n))

    hold(60, 0.5)
    for _ in range(cycles):
        hold(rng.randint(15, 25), 70)
        hold(rng.randint(30, 50), 0.5)
    hold(120, 0.5)
    return _points(w, t0)


def _share(points: list[TracePoint], profile_fn: str, learned_profile: Profile) -> float:
    tl = replay(points, learned_profile)
    e = tl.energy_by_function()
    return e.get(profile_fn, 0) / sum(e.values())


def test_a_relearned_heat_detects_another_ovens_heat_through_its_thermostat_pauses() -> None:
    """The issue's acceptance test: a recorded run -> a learned rule -> another run of the function, replayed,
    is detected. The heat of a fan oven is recorded from rest to its end; the thermostat's pauses (the fan alone,
    36 W, for 1-2.5 minutes) stay inside it."""
    recorded = oven("fan-oven-2kW")
    end = max(i for i, label in enumerate(recorded.labels) if label == "heat") + 1
    learned = derive_rule(builtin_profile("oven"), "heat", _points(recorded.watts[:end]), appliance="oven")
    assert learned.relearned and learned.detected > 0.99
    assert 1_000_000 < learned.rule.on_min_mw < learned.levels.p5_mw  # below the element, far above the fan
    assert learned.levels.pauses >= 10 and learned.rule.min_off_ns / 1e9 > learned.levels.longest_pause_s
    other = oven("top-bottom-2.2kW")
    tl = replay(_points(other.watts), learned.profile)
    true_heat = sum(w for w, label in zip(other.watts, other.labels, strict=True) if label == "heat") / 3.6  # mWh
    assert tl.energy_by_function()["heat"] == pytest.approx(true_heat, rel=0.02)
    assert len(tl.uses) == 1


def test_a_relearned_boil_detects_the_boils_of_another_day() -> None:
    recorded = kettle("kettle-3kW")
    learned = derive_rule(builtin_profile("kettle"), "boil", _points(recorded.watts[:270]), appliance="kettle")
    assert 2_000_000 < learned.rule.on_min_mw < 2_900_000
    cycle = builtin_profile("kettle").cycle
    assert cycle is not None and learned.rule.min_on_ns <= cycle.start_ns
    another = kettle("kettle-3kW", seed=19)
    tl = replay(_points(another.watts), learned.profile)
    assert _share(_points(another.watts), "boil", learned.profile) > 0.99
    assert len(tl.uses) == len(another.uses) == 3


def test_a_new_function_narrows_the_catch_all_standby_and_keeps_the_boil() -> None:
    """The kettle's standby takes everything below 999 W; a learned 70 W keep-warm takes its band out of it (and
    no more), goes before it, and the boils of the history keep their energy."""
    history = _points(kettle("kettle-2.2kW").watts, T0 - 4000)
    learned = derive_rule(builtin_profile("kettle"), "keep_warm", _keep_warm(1), appliance="kettle",
                          history=history)
    names = [f.name for f in learned.profile.functions]
    assert names == ["boil", "keep_warm", "standby"] and not learned.relearned
    standby = learned.profile.functions[2]
    assert 5_000 < standby.on_max_mw <= learned.rule.off_min_mw  # the rest (0.5 W) stays standby
    assert any(a.startswith("standby: on_below_w 999 -> ") for a in learned.adjusted), learned.adjusted
    assert learned.kept["boil"] == pytest.approx(1.0)
    assert _share(_keep_warm(2), "keep_warm", learned.profile) > 0.97  # another evening's keep-warm
    assert _share(history, "boil", learned.profile) > 0.99


def test_a_relearned_cool_keeps_its_mode_signal_and_the_heat_at_the_same_power_is_no_rival() -> None:
    """Cooling and heating draw the same; the mode signal tells them apart, so relearning one leaves the other be.
    The fan-only spells between compressor runs (5-10 minutes) are another function, not pauses of the cooling."""
    tr = aircon("split-3.5kW-cool")
    signals = [TracePoint(T0 + i - 0.5, None, name, value) for i, name, value in tr.signals]
    learned = derive_rule(builtin_profile("air_conditioner"), "cool", [*_points(tr.watts), *signals])
    assert (learned.rule.signal, learned.rule.value) == ("mode", "cool")
    assert learned.levels.breaks == 3 and learned.rule.min_off_ns < 300 * 10**9
    heat = next(f for f in learned.profile.functions if f.name == "heat")
    assert heat == next(f for f in builtin_profile("air_conditioner").functions if f.name == "heat")
    other = aircon("split-3.5kW-cool", seed=20)
    tl = replay(_points(other.watts), learned.profile,
                signals=[TracePoint(T0 + i - 0.5, None, n, v) for i, n, v in other.signals])
    true_cool = sum(w for w, label in zip(other.watts, other.labels, strict=True) if label == "cool") / 3.6
    assert tl.energy_by_function()["cool"] == pytest.approx(true_cool, rel=0.02)


def test_a_function_power_cannot_tell_from_another_is_refused_naming_both() -> None:
    """A grill at 2 kW on an oven whose heat (seen in the history at 2 kW) is the same power: refused."""
    recorded = oven("grill-2kW")
    end = max(i for i, label in enumerate(recorded.labels) if label == "heat") + 1
    history = _points(oven("fan-oven-2kW").watts, T0 - 20_000)
    with pytest.raises(LearnRefused, match=r"power alone cannot tell it .* from heat .*measured") as e:
        derive_rule(builtin_profile("oven"), "grill", _points(recorded.watts[:end]), appliance="oven",
                    history=history)
    assert e.value.function == "grill"


def test_a_recording_without_the_function_is_refused() -> None:
    with pytest.raises(LearnRefused, match="no function seen"):
        derive_rule(builtin_profile("kettle"), "boil", _points([0.5] * 120), appliance="kettle")
    with pytest.raises(LearnRefused, match="cannot be a function name"):
        derive_rule(builtin_profile("kettle"), "other", _points(kettle("kettle-3kW").watts), appliance="kettle")


def test_the_session_waits_runs_and_says_when_the_appliance_is_back_at_rest() -> None:
    session = LearnSession("kettle", "keep_warm", baseline_mw=500, idle_s=55)
    states = [session.feed(p) for p in _keep_warm(3)]
    assert states[0] == "waiting" and "running" in states
    assert states[-1] == "rested"  # 120 s of rest at the end; the thermostat's 30-50 s pauses did not end it
    assert states.index("rested") > len(states) - 120
    assert len(session.stop()) == len(states) and session.state == "stopped"
    assert session.feed(TracePoint(T0 + 9999, 70_000)) == "stopped" and len(session.samples) == len(states)


def test_without_a_baseline_the_session_takes_the_rest_from_its_first_readings() -> None:
    session = LearnSession("kettle", "keep_warm", idle_s=55)
    states = [session.feed(p) for p in _keep_warm(3)]
    assert 1_700 <= (session.threshold_mw or 0) <= 2_300  # the rest (0.2-0.8 W) + 1.5 W
    assert "running" in states and states[-1] == "rested"


def test_a_recording_is_cut_from_the_daemons_ring_with_the_rest_before_it() -> None:
    ring = _points([3.0] * 120 + [70.0] * 30 + [3.0] * 60, T0 - 120)  # 2 min at 3 W before the start mark
    rec = cut_recording(ring, T0, T0 + 60)
    assert rec.rest_mw == 3000 and len(rec.samples) == 61 and len(rec.history) == len(ring) - 61
    assert cut_recording(ring[120:], T0, T0 + 60).rest_mw is None  # nothing before the mark: found later


CONFIG = """\
# the household's gateway
[gateway]
id = "gw-learn"
state_dir = "{state}"

[[appliance]]
id = "washer"   # the one in the cellar
profile = "washing_machine"
[appliance.sources.w]
driver = "s0"
pin = 17
imp_per_kwh = 1000

[[appliance]]
id = "kettle"
profile = "kettle"   # built-in, until learned
[appliance.sources.k]
driver = "s0"
pin = 27
imp_per_kwh = 1000
"""


def test_saving_writes_the_profile_and_its_override_in_the_state_folder_never_the_config(tmp_path: Path) -> None:
    cfg_path = tmp_path / "koto.toml"
    state = tmp_path / "state"
    state.mkdir()
    cfg_path.write_text(CONFIG.format(state=state))
    before = cfg_path.read_bytes()
    learned = derive_rule(builtin_profile("kettle"), "keep_warm", _keep_warm(1), appliance="kettle")
    saved = save_learned(learned, config_path=cfg_path, appliance="kettle", when=T0)
    assert saved.config_edited and saved.profile_path == state / "profiles" / "kettle.toml"
    assert cfg_path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["koto.toml", "state"]
    household = (state / "household.toml").read_text()
    assert tomllib.loads(household) == {"override": {"kettle": {"profile": "profiles/kettle.toml"}}}
    assert load_config(cfg_path).appliances[1].profile == str(saved.profile_path)
    assert load_config(cfg_path).appliances[0].profile == "washing_machine"  # the washer: untouched
    prof = load_profile(saved.profile_path)
    assert prof.name == "kettle-kettle" and [f.name for f in prof.functions] == ["boil", "keep_warm", "standby"]
    assert "`koto learn` added 'keep_warm' for kettle" in saved.profile_path.read_text()

    # learned again (relearned, now from the learned file): written in place, its header comments kept
    again = derive_rule(prof, "keep_warm", _keep_warm(4), appliance="kettle")
    saved2 = save_learned(again, config_path=cfg_path, appliance="kettle", when=T0 + 60)
    assert not saved2.config_edited and saved2.profile_path == saved.profile_path
    text = saved.profile_path.read_text()
    assert text.count("`koto learn` added") == 1 and text.count("`koto learn` relearned") == 1
    assert text.startswith("# kettle's own profile")
    assert (state / "household.toml").read_text() == household


def test_an_override_is_set_in_place_keeping_the_rest_of_household_toml() -> None:
    paired = '# Added on the status page\n[[appliance]]\nid = "dryer"\nprofile = "tumble_dryer"\n'
    once = set_override(paired, "kettle", "profiles/kettle.toml")
    assert once.startswith(paired) and tomllib.loads(once)["override"]["kettle"] == {"profile": "profiles/kettle.toml"}
    twice = set_override(once, "kettle", "profiles/kettle2.toml")
    assert twice.count("[override.") == 1 and tomllib.loads(twice)["override"]["kettle"]["profile"].endswith("2.toml")
    dotted = set_override("", "washer.1", "profiles/washer.1.toml")
    assert tomllib.loads(dotted) == {"override": {"washer.1": {"profile": "profiles/washer.1.toml"}}}
