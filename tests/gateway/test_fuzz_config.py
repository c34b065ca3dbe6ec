"""Fuzzing the gateway's configuration: TOML text mutated byte by byte, and the example config with values of the
wrong type or out of range put anywhere in it.

Outside bytes enter at `gateway.config.load_config(path)` (`koto run`) and `gateway.config_check.check_config(path)`
(`koto check --config`), and as a parsed document at `parse_config` (first boot's `koto.toml`). The properties:
- `load_config` / `parse_config` either return a config or raise a `FieldError` — a `ConfigError` (one problem or
  `ConfigErrors`), or a driver's `DriverConfigError` — naming the file and a non-empty key; never another exception;
- `check_config` never raises: every problem is in its report, each naming the file and the key;
- whatever is accepted parses again to the same config (no stand-in leaks into a config that was accepted).
The seed is the shipped example, deploy/koto.example.toml, which names every driver and table.
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.config import load_config, parse_config
from gateway.config_check import check_config
from gateway.errors import ConfigErrors
from koto.errors import FieldError
from tests.support.fuzzing import deep_copy, fuzz_settings, get_at, paths

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "koto.example.toml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
EXAMPLE_DOC = tomllib.loads(EXAMPLE_TEXT)
FILE = "koto.toml"


def problems_of(e: FieldError) -> tuple[FieldError, ...]:
    return e.errors if isinstance(e, ConfigErrors) else (e,)


def check_named(e: FieldError, file: str, maps: tuple[str, ...] = ()) -> None:
    """Each problem names a key and a file: the config's, or a register map's own (`maps`: the paths given). A
    problem of the whole file (not UTF-8, not TOML) names the file alone, and says it is about the file."""
    for p in problems_of(e):
        assert isinstance(p, FieldError)
        assert p.problem, p
        assert p.key or p.problem.startswith(("not UTF-8", "not valid TOML", "cannot read", "file not found")), p
        assert p.file == file or p.file.endswith(".toml") or p.key == "map" or p.file in maps, p


# TOML values of every type, with the awkward ones over-weighted: huge and negative numbers, NaN and infinities,
# NUL and control characters in strings, paths to folders, dates, empty and nested tables and arrays.
toml_scalar = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["", "\x00", "a\x00b", "/", "/tmp", ".", "..", "*", "kWh", "sdm120", "modbus", "line", "s0",
                     "bthome", "gpio_signal", "mcp3008", "1e999", "nan", "-1", "A4:C1:38:12:34:56", "/dev/null"]),
    st.sampled_from([0, -1, 1, 2**53, 2**63 - 1, math.inf, -math.inf, math.nan, 1e308, -0.0, 5e-324]),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.dates(),
    st.times(),
)
toml_value = st.recursive(toml_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=4)


ALL_PATHS = paths(EXAMPLE_DOC)
mutation = st.tuples(st.sampled_from(["replace", "delete", "add"]), st.integers(0, 10**6), st.text(max_size=8),
                     toml_value)


def mutate(doc: dict[str, Any], edits: list[tuple[str, int, str, Any]]) -> dict[str, Any]:
    doc = deep_copy(doc)
    for how, pick, name, value in edits:
        where = paths(doc)
        if not where:
            break
        path = where[pick % len(where)]
        parent = get_at(doc, path[:-1])
        if how == "replace":
            parent[path[-1]] = value
        elif how == "delete":
            del parent[path[-1]]
        else:
            tables = [p for p in [(), *where] if isinstance(get_at(doc, p), dict)]
            get_at(doc, tables[pick % len(tables)])[name] = value
    return doc


@fuzz_settings(500)
@given(edits=st.lists(mutation, min_size=1, max_size=3))
@example(edits=[("replace", ALL_PATHS.index(("appliance", 0, "sources", "washer-meter", "model")), "", "\x00")])
def test_a_config_with_wrong_values_anywhere_is_one_clean_error_naming_file_and_key(
        edits: list[tuple[str, int, str, Any]]) -> None:
    doc = mutate(EXAMPLE_DOC, edits)
    base = Path("/nonexistent-koto-base")
    try:
        cfg = parse_config(doc, file=FILE, base=base)
    except FieldError as e:
        check_named(e, FILE)
        return
    assert parse_config(doc, file=FILE, base=base) == cfg


@fuzz_settings(500)
@given(edits=st.lists(st.tuples(st.sampled_from(["key", "value", "map"]), st.integers(0, 10**6), toml_value),
                      min_size=1, max_size=2))
@example(edits=[("map", 0, "/dev/null")])
def test_a_source_table_with_wrong_values_is_a_named_error(edits: list[tuple[str, int, Any]]) -> None:
    """The drivers' own keys, which a mutation of the whole file reaches only now and then."""
    doc = deep_copy(EXAMPLE_DOC)
    sources = [s for a in doc["appliance"] for s in a["sources"].values()]
    for what, pick, value in edits:
        table = sources[pick % len(sources)]
        keys = sorted(table)
        if what == "key":
            table[str(value)[:12]] = value
        elif what == "map":  # a register map given inline, or by a path that may not exist or may hold a NUL
            table.pop("model", None)
            table["map"] = value
        else:
            table[keys[pick % len(keys)]] = value
    try:
        parse_config(doc, file=FILE)
    except FieldError as e:
        # a map file that exists but is no map (make fuzz: "/dev/null") is named by its own path and key
        check_named(e, FILE, tuple(v for what, _, v in edits if what == "map" and isinstance(v, str)))


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
        elif op == 3:  # duplicate a line: a key or table twice is a TOML error
            start = data.rfind(b"\n", 0, i) + 1
            end = data.find(b"\n", i)
            end = len(data) if end < 0 else end
            data[start:start] = data[start:end] + b"\n"
    return bytes(data)


@fuzz_settings(300)
@given(edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=4))
@example(edits=[(0, 0, 0xFF)])  # not UTF-8
def test_config_text_mutated_byte_by_byte_is_a_clean_error_or_a_config(tmp_path_factory: Any,
                                                                        edits: list[tuple[int, int, int]]) -> None:
    path = tmp_path_factory.mktemp("cfg") / "koto.toml"
    path.write_bytes(mutate_text(EXAMPLE_TEXT, edits))
    try:
        load_config(path)
    except FieldError as e:
        check_named(e, str(path))
    report = check_config(path, with_state=False)  # never raises
    for p in report.problems:
        check_named(p, str(path))


def named_problem(doc: dict[str, Any]) -> FieldError:
    try:
        parse_config(doc, file=FILE)
    except FieldError as e:
        check_named(e, FILE)
        return e
    raise AssertionError("accepted")


def test_regressions_found_by_fuzzing() -> None:
    doc = deep_copy(EXAMPLE_DOC)
    doc["appliance"][2]["sources"]["kettle-s0"]["imp_per_kwh"] = [1000]  # int() of a list: TypeError escaped
    assert any(p.key == "imp_per_kwh" for p in problems_of(named_problem(doc)))
    doc = deep_copy(EXAMPLE_DOC)
    meter = doc["appliance"][0]["sources"]["washer-meter"]
    del meter["model"]
    meter["map"] = "maps/a\x00b.toml"  # a NUL in the path: ValueError escaped the register map loader
    assert any(p.key == "map" and "NUL" in p.problem for p in problems_of(named_problem(doc)))
    doc = deep_copy(EXAMPLE_DOC)
    doc["appliance"][0]["sources"]["washer-meter"]["port"] = "\x00"  # os.path.realpath's ValueError escaped
    assert any(p.key == "port" and "NUL" in p.problem for p in problems_of(named_problem(doc)))
    doc = {**deep_copy(EXAMPLE_DOC), "": 1}  # an empty key was named as nothing: "koto.toml: : unknown key"
    assert any(p.key == '""' for p in problems_of(named_problem(doc)))
