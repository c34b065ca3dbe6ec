"""Fuzzing appliance profiles: the built-in TOML files mutated byte by byte, and their documents with values of the
wrong type or size put anywhere.

Outside bytes enter at `metering.profile.load_profile(path)` (a profile named by path in the config, `koto profile`)
and, parsed, at `parse_profile` (the same shape arrives in a signed `io.koto.cmd.profile.v1` downlink command).
The properties:
- nothing but `ProfileError` (a `FieldError` naming the file and a non-empty key) ever leaves the loader;
- what is accepted is a consistent profile: every band non-empty with hysteresis that only widens it, integer mW
  and ns below 2**53, unique function names, references only to other functions of the profile.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from koto.canonical import MAX_SAFE_INT
from metering.errors import ProfileError
from metering.profile import BUILTIN_NAMES, NO_MAX, NO_MIN, Profile, load_profile, parse_profile
from tests.support.fuzzing import deep_copy, fuzz_settings, get_at, paths

PROFILE_DIR = Path(__file__).resolve().parents[2] / "metering" / "profiles"
TEXTS = {n: (PROFILE_DIR / f"{n}.toml").read_text(encoding="utf-8") for n in BUILTIN_NAMES}
DOCS = {n: tomllib.loads(t) for n, t in TEXTS.items()}
NAMES = sorted(BUILTIN_NAMES)


def check_profile(p: Profile) -> None:
    names = [f.name for f in p.functions]
    assert len(set(names)) == len(names) and p.unmatched not in names
    assert 0 < p.max_power_mw <= MAX_SAFE_INT
    for f in p.functions:
        assert f.on_min_mw <= f.on_max_mw and f.off_min_mw <= f.on_min_mw and f.off_max_mw >= f.on_max_mw
        for mw in (f.on_min_mw, f.on_max_mw, f.off_min_mw, f.off_max_mw):
            assert mw in (NO_MIN, NO_MAX) or 0 <= mw <= MAX_SAFE_INT
        assert 0 <= f.min_on_ns <= MAX_SAFE_INT and 0 <= f.min_off_ns <= MAX_SAFE_INT
        assert set(f.only_after) | set(f.takes_over) <= set(names) - {f.name}
    if p.cycle is not None:
        assert 0 <= p.cycle.end_mw <= p.cycle.start_mw <= MAX_SAFE_INT
        assert 0 <= p.cycle.start_ns <= MAX_SAFE_INT and 0 <= p.cycle.end_ns <= MAX_SAFE_INT


def check_error(e: ProfileError, file: str) -> None:
    assert e.file == file and e.key and e.problem


value = st.recursive(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.text(max_size=10),
              st.sampled_from([0, -1, 1e308, 1e306, math.inf, math.nan, 2**53, "", "boil", "standby", "spin"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=4,
)
KEYS = ["name", "max_power_w", "max_power_mw", "version", "unmatched", "description", "function", "cycle",
        "on_above_w", "off_below_w", "on_below_w", "off_above_w", "on_above_mw", "min_on_s", "min_off_s", "signal",
        "value", "only_after", "takes_over", "start_above_w", "start_for_s", "end_below_w", "end_for_s"]


def mutate(doc: dict[str, Any], edits: list[tuple[int, int, str, Any]]) -> dict[str, Any]:
    doc = deep_copy(doc)
    for how, pick, key, v in edits:
        where = paths(doc)
        if not where:
            break
        path = where[pick % len(where)]
        parent = get_at(doc, path[:-1])
        if how == 0:
            parent[path[-1]] = v
        elif how == 1:
            del parent[path[-1]]
        else:
            tables = [p for p in [(), *where] if isinstance(get_at(doc, p), dict)]
            get_at(doc, tables[pick % len(tables)])[key] = v
    return doc


edit = st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.sampled_from(KEYS) | st.text(max_size=6), value)


@fuzz_settings(1000)
@given(name=st.sampled_from(NAMES), edits=st.lists(edit, min_size=1, max_size=3))
@example(name="kettle", edits=[(2, 0, "", 1)])
@example(name="fridge_freezer", edits=[(0, 2850, "name", 9007200)])  # min_on_s = 104.25 days: ns beyond 2**53
def test_a_profile_with_wrong_values_anywhere_is_a_named_error_or_consistent(
        name: str, edits: list[tuple[int, int, str, Any]]) -> None:
    doc = mutate(DOCS[name], edits)
    try:
        p = parse_profile(doc, file="p.toml")
    except ProfileError as e:
        check_error(e, "p.toml")
        return
    check_profile(p)


def mutate_text(text: str, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(text.encode())
    for op, pos, b in edits:
        i = pos % (len(data) + 1)
        if op == 0 and i < len(data):
            data[i] = b
        elif op == 1:
            data[i:i] = bytes([b])
        elif op == 2 and i < len(data):
            del data[i]
    return bytes(data)


@fuzz_settings(500)
@given(name=st.sampled_from(NAMES), edits=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6),
                                                             st.integers(0, 255)), min_size=1, max_size=4))
@example(name="kettle", edits=[(0, 0, 0xFF)])
def test_profile_text_mutated_byte_by_byte_is_a_named_error_or_consistent(
        tmp_path_factory: Any, name: str, edits: list[tuple[int, int, int]]) -> None:
    path = tmp_path_factory.mktemp("p") / f"{name}.toml"
    path.write_bytes(mutate_text(TEXTS[name], edits))
    try:
        p = load_profile(path)
    except ProfileError as e:
        check_error(e, str(path))
        return
    check_profile(p)


def test_a_profile_path_with_a_nul_is_a_named_error() -> None:
    """TOML allows "\\u0000" in a string, so a config's `profile = "a\\u0000.toml"` reaches the loader (fuzzing)."""
    with pytest.raises(ProfileError) as e:
        load_profile("a\x00.toml")
    assert e.value.key == "(file)" and "NUL" in e.value.problem


KETTLE = {"name": "k", "max_power_w": 3200, "function": [{"name": "boil", "on_above_w": 1000}],
          "cycle": {"start_above_w": 1000, "end_below_w": 100}}


@pytest.mark.parametrize(("doc", "key"), [
    ({**KETTLE, "max_power_w": 1e308}, "max_power_w"),  # round(1e308 * 1000) raised OverflowError (fuzzing)
    ({**KETTLE, "function": [{"name": "boil", "on_above_w": 1000, "min_on_s": 1e308}]}, "function[0].min_on_s"),
    ({**KETTLE, "cycle": {"start_above_w": 1000, "end_below_w": 100, "end_for_s": 1e300}}, "cycle.end_for_s"),
    ({**KETTLE, "function": [{"name": "boil", "on_above_mw": 2**63}]}, "function[0].on_above_mw"),
])
def test_numbers_too_large_to_be_real_are_named_errors(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ProfileError) as e:
        parse_profile(doc, file="p.toml")
    assert e.value.key == key
