"""Profiles: built-ins load and say where their numbers come from; bad ones name file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.errors import ProfileError
from metering.profile import BUILTIN_NAMES, NO_MAX, builtin_profile, builtin_profiles, load_profile, parse_profile
from tests.support.paths import REPO

PROFILES_DIR = REPO / "metering" / "profiles"


def test_every_builtin_loads_with_standby_and_a_cycle() -> None:
    profiles = builtin_profiles()
    assert set(profiles) == set(BUILTIN_NAMES)
    for name, p in profiles.items():
        assert p.name == name and p.max_power_mw > 0 and p.cycle is not None
        assert "standby" in p.function_names()


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_says_where_its_numbers_come_from(name: str) -> None:
    text = (PROFILES_DIR / f"{name}.toml").read_text()
    assert text.startswith("#") and "Where the numbers come from" in text


def test_washer_thresholds_become_integer_milliwatts_with_hysteresis() -> None:
    heat = builtin_profile("washing_machine").functions[0]
    assert (heat.name, heat.on_min_mw, heat.off_min_mw, heat.on_max_mw) == ("heat", 1_000_000, 700_000, NO_MAX)
    assert heat.min_on_ns == 3_000_000_000


def test_air_conditioner_functions_use_the_mode_signal() -> None:
    cool, heat = builtin_profile("air_conditioner").functions[:2]
    assert (cool.signal, cool.value, heat.signal, heat.value) == ("mode", "cool", "mode", "heat")


def _base(**func: object) -> dict[str, object]:
    return {"name": "x", "max_power_w": 100, "function": [{"name": "on", "on_above_w": 10, **func}]}


@pytest.mark.parametrize(("data", "key", "words"), [
    ({**_base(), "colour": "red"}, "colour", "unknown key; allowed:"),
    (_base(on_abve_w=3), "function[0].on_abve_w", "unknown key"),
    (_base(on_above_mw=5), "function[0].on_above_w", "not both"),
    (_base(off_below_w=20), "function[0].off_below_w", "at or below on_above_w"),
    (_base(on_below_w=5), "function[0].on_below_w", "at or above on_above_w"),
    (_base(signal="mode"), "function[0].value", "signal and value go together"),
    (_base(min_on_s=-1), "function[0].min_on_s", "seconds >= 0"),
    (_base(on_above_w="ten"), "function[0].on_above_w", "number of watts"),
    ({"name": "x", "max_power_w": 100, "function": [{"name": "idle"}]}, "function[0]", "needs a power band"),
    ({"name": "x", "function": [{"name": "on", "on_above_w": 1}]}, "max_power_w", "maximum power"),
    ({"max_power_w": 1, "function": [{"name": "on", "on_above_w": 1}]}, "name", "missing"),
    ({"name": "x", "max_power_w": 1, "function": []}, "function", "at least one"),
    ({"name": "x", "max_power_w": 1, "function": [{"name": "a", "on_above_w": 1}, {"name": "a", "on_below_w": 1}]},
     "function[1].name", "duplicate"),
    ({**_base(), "cycle": {"start_above_w": 5, "end_below_w": 9}}, "cycle.end_below_w", "at or below"),
    ({**_base(), "cycle": {"start_above_w": 5, "end_below_w": 1, "for_s": 3}}, "cycle.for_s", "unknown key"),
    ({**_base(), "cycle": {"start_above_w": 5, "end_below_w": 1, "left_on_for_s": 60}}, "cycle.left_on_below_w",
     "go together"),
    ({**_base(), "cycle": {"start_above_w": 5, "end_below_w": 1, "left_on_below_w": 6, "left_on_for_s": 60}},
     "cycle.left_on_below_w", "must not start a use"),
    ({**_base(), "cycle": {"start_above_w": 5, "end_below_w": 1, "end_for_s": 90, "left_on_below_w": 1,
                           "left_on_for_s": 60}}, "cycle.left_on_for_s", "at least cycle.end_for_s"),
    (_base(only_after="spin"), "function[0].only_after", "not another function of this profile"),
    (_base(only_after=["on"]), "function[0].only_after", "not another function"),
    (_base(only_after=3), "function[0].only_after", "a function name or a list"),
    (_base(takes_over=["spin"], min_on_s=5), "function[0].takes_over", "not another function"),
    (_base(takes_over=["x"]), "function[0].min_on_s", "needs a dwell"),
    ({"name": "x", "max_power_w": 100, "function": [{"name": "a", "on_above_w": 10, "only_after": "b"},
                                                    {"name": "b", "on_below_w": 9}]},
     "function[0].only_after", "needs a [cycle] rule"),
])
def test_a_bad_profile_names_the_key_and_what_is_allowed(data: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ProfileError) as exc:
        parse_profile(data, file="site/washer.toml")
    assert exc.value.file == "site/washer.toml" and exc.value.key == key
    assert words in exc.value.problem
    assert str(exc.value).startswith(f"site/washer.toml: {key}: ")


def test_load_profile_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "washer.toml"
    bad.write_text('name = "w"\nmax_power_w = 10\n[[function]]\nname = "on"\non_above_w = 1\nmin_of_s = 2\n')
    with pytest.raises(ProfileError) as exc:
        load_profile(bad)
    assert exc.value.file == str(bad) and exc.value.key == "function[0].min_of_s"
    bad.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(tmp_path / "missing.toml")


def test_a_valid_file_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "kettle.toml"
    f.write_text((PROFILES_DIR / "kettle.toml").read_text())
    assert load_profile(f).functions == builtin_profile("kettle").functions


def test_unknown_builtin_lists_the_choices() -> None:
    with pytest.raises(ProfileError, match="washing_machine"):
        builtin_profile("toaster")
