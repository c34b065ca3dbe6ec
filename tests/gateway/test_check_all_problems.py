"""`koto check` names every bad value of a source, not just the first: an installer with `address = 300`,
`baud = 9601` and `parity = "X"` in one meter's table reads three lines from one run, instead of fixing them one
`koto check` at a time. `koto run` still refuses to start on any of them, its first line as it was. A check that
depends on a value already found bad (`min` against a bad `max`) is skipped, not said as a confusing second problem.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from drivers.base import build_source
from drivers.errors import DriverConfigError, DriverConfigErrors
from gateway.cli import main
from koto.clock import ManualClock

HEAD = """
[gateway]
id = "gw-0001"
state_dir = "state"

[[appliance]]
id = "washer"
profile = "washing_machine"
"""

GOOD_METER = """
[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "/dev/ttyUSB0"
"""

# For each driver kind, a source with three independent bad values: its table, and the three keys in the order
# `koto check` says them, each with a word of what it says is allowed.
THREE_BAD = {
    "modbus": ('driver = "modbus"\nmodel = "sdm120"\nport = "/dev/ttyUSB0"\naddress = 300\nbaud = 9601\n'
               'parity = "X"',
               [("address", "1..247"), ("baud", "9600"), ("parity", '"E"')]),
    "modbus register map": (
        'driver = "modbus"\nport = "/dev/ttyUSB0"\nmap = { register = [\n'
        '  { key = "p", address = 0, type = "float64", quantity = "power_mw", unit = "W" },\n'
        '  { key = "e", address = 2, type = "float32", quantity = "energy_mwh", unit = "furlong" },\n'
        '  { key = "v", address = 4, type = "float32", quantity = "voltage_mv", unit = "V", max = "lots" } ] }',
        [("register[0] (p).type", "float32"), ("register[1] (e).unit", "kWh"), ("register[2] (v).max", "number")]),
    "s0": ('driver = "s0"\npin = 40\nimp_per_kwh = 0\npull = "sideways"',
           [("pin", "0 to 27"), ("imp_per_kwh", "above 0"), ("pull", "up, down, none")]),
    "gpio_signal": ('driver = "gpio_signal"\npin = 17\npull = "sideways"\nactive_value = ""\nbounce_ms = -1',
                    [("pull", "up, down, none"), ("active_value", "non-empty"), ("bounce_ms", "0 to 10000")]),
    "mcp3008": ('driver = "mcp3008"\nchannel = 9\ngain = 1\nsamples = 0\nspi_device = 2',
                [("channel", "0 to 7"), ("samples", "1 to 1000"), ("spi_device", "0 to 1")]),
    "line": ('driver = "line"\nport = "/dev/ttyACM0"\nbaud = 7\nformat = "xml"\n'
             'keys = { pw = { quantity = "power_mw", unit = "furlong" } }',
             [("baud", "300..4000000"), ("format", "auto, json, kv"), ("keys.pw.unit", "kW")]),
    "bthome": ('driver = "bthome"\naddress = "nope"\nbindkey = "xyz"\nstale_after_s = 0',
               [("address", "A4:C1:38:8D:18:B2"), ("bindkey", "32 hex digits"), ("stale_after_s", "above 0")]),
}


def write(tmp_path: Path, source: str, extra: str = "") -> Path:
    p = tmp_path / "koto.toml"
    p.write_text(f"{HEAD}\n[appliance.sources.plug]\n{source}\n{extra}")
    return p


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(["check", "--config", str(path), "--no-state"])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def run_refusal(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["run", "--config", str(path)]) == 2
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("koto: ")]


@pytest.mark.parametrize("kind", THREE_BAD)
def test_a_source_with_three_bad_values_gives_three_lines_and_koto_run_refuses_naming_the_first(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, expected = THREE_BAD[kind]
    path = write(tmp_path, table)
    code, lines, err = check(path, capsys)
    assert code == 1
    assert len(lines) == 3, lines
    for line, (key, allowed) in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}: source 'plug': {key}: "), line
        assert allowed in line, (allowed, line)
    assert f"{path}: 3 problems; nothing was started" in err
    refusal = run_refusal(path, capsys)
    assert refusal[0] == f"koto: {lines[0]}"  # the first line, worded as before
    assert refusal == [f"koto: {line}" for line in lines]
    assert not (tmp_path / "state").exists()


def test_a_relay_with_three_bad_values_gives_three_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "koto.toml"
    path.write_text(f'{HEAD}\n[appliance.relay]\npin = 99\nactive_high = "yes"\nwiring = "maybe"\n{GOOD_METER}')
    code, lines, _ = check(path, capsys)
    assert code == 1
    assert [ln.split(": ")[1] for ln in lines] == [f"appliance.washer.relay.{k}" for k in
                                                    ("pin", "active_high", "wiring")], lines
    assert run_refusal(path, capsys)[0] == f"koto: {lines[0]}"


def test_unknown_keys_and_bad_values_of_one_source_are_all_said(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'driver = "s0"\npin = 40\nimp_per_kwh = 0\nbounce = 5\npul = "up"')
    code, lines, _ = check(path, capsys)
    assert code == 1
    assert [ln.split(": ")[2] for ln in lines] == ["bounce", "pul", "pin", "imp_per_kwh"], lines


def test_the_driver_raises_them_together_and_code_that_expects_one_error_sees_the_first() -> None:
    cfg = {"driver": "modbus", "model": "sdm120", "port": "/dev/ttyUSB0", "address": 300, "baud": 9601,
           "parity": "X"}
    with pytest.raises(DriverConfigError) as err:
        build_source("washer-meter", cfg, clock=ManualClock(), file="koto.toml")
    e = err.value
    assert isinstance(e, DriverConfigErrors) and isinstance(e, ValueError)
    assert [one.key for one in e.errors] == ["address", "baud", "parity"]
    assert all(one.file == "koto.toml" and one.source == "washer-meter" for one in e.errors)
    assert (e.file, e.source, e.key) == ("koto.toml", "washer-meter", "address")
    assert str(e) == f"{e.errors[0]} (and 2 more in this source; koto check lists every one)"
    one = {**cfg, "baud": 9600, "parity": "N"}
    with pytest.raises(DriverConfigError) as single:
        build_source("washer-meter", one, clock=ManualClock(), file="koto.toml")
    assert type(single.value) is DriverConfigError  # one problem is raised as it always was
    assert str(single.value) == str(e.errors[0])


# A value that depends on one already found bad is not judged against it: only the bad values are said.
DEPENDENT = {
    "a register's min against a bad max": (
        'driver = "modbus"\nport = "/dev/ttyUSB0"\nmap = { register = [ { key = "p", address = 0, type = "float32", '
        'quantity = "power_mw", unit = "W", min = 10, max = "lots" } ] }', ["register[0] (p).max"]),
    "a register's unit against a bad quantity": (
        'driver = "modbus"\nport = "/dev/ttyUSB0"\nmap = { register = [ { key = "p", address = 0, type = "float32", '
        'quantity = "power", unit = "W" } ] }', ["register[0] (p).quantity"]),
    "address 248 against an unknown model": (
        'driver = "modbus"\nmodel = "sdm12O"\nport = "/dev/ttyUSB0"\naddress = 248', ["model"]),
    "a line key's unit against a bad quantity": (
        'driver = "line"\nport = "/dev/ttyACM0"\nkeys = { pw = { quantity = "watts", unit = "W" } }',
        ["keys.pw.quantity"]),
    "a signal's two state names when both are bad": (
        'driver = "gpio_signal"\npin = 17\nactive_value = 5\ninactive_value = 5', ["active_value", "inactive_value"]),
    "an S0 debounce against the pulse width when it is out of range": (
        'driver = "s0"\npin = 17\nimp_per_kwh = 1000\nbounce_ms = 500', ["bounce_ms"]),
    "calibration points when gain is given too": (
        'driver = "mcp3008"\nchannel = 0\ngain = 1\npoints = "bad"', ["points"]),
}


@pytest.mark.parametrize("case", DEPENDENT)
def test_a_value_that_depends_on_a_bad_one_is_not_a_second_problem(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, keys = DEPENDENT[case]
    path = write(tmp_path, table)
    code, lines, _ = check(path, capsys)
    assert code == 1
    assert [ln.split(": source 'plug': ")[1].split(": ")[0] for ln in lines] == keys, lines
    with pytest.raises(DriverConfigError) as err:  # the driver itself says no more (koto check drops repeats)
        build_source("plug", tomllib.loads(path.read_text())["appliance"][0]["sources"]["plug"], clock=ManualClock())
    assert [one.key for one in err.value.each()] == keys


def test_the_dependent_checks_still_refuse_when_both_values_are_good(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    register = ('driver = "modbus"\nport = "/dev/ttyUSB0"\nmap = { register = [ { key = "p", address = 0, '
                'type = "float32", quantity = "power_mw", unit = "W", min = 10, max = 5 } ] }')
    _, lines, _ = check(write(tmp_path, register), capsys)
    assert len(lines) == 1 and "register[0] (p).min: is above max" in lines[0]
    _, lines, _ = check(write(tmp_path, 'driver = "gpio_signal"\npin = 17\nactive_value = "off"'), capsys)
    assert len(lines) == 1 and "inactive_value: 'off' is the same as active_value" in lines[0]
    eastron = 'driver = "modbus"\nmodel = "sdm120"\nport = "/dev/ttyUSB0"\naddress = 248'
    _, lines, _ = check(write(tmp_path, eastron), capsys)
    assert len(lines) == 1 and "address: 248 (0xF8) is the PZEM-004T's general address" in lines[0]


@pytest.mark.parametrize(("table", "body", "expected"), [
    ("led", 'pin = 99\npwm = "yes"\nbrightness = 7\ncolour = "red"',
     ["colour: unknown key", "pin:", "pwm:", "brightness:"]),
    ("button", 'pin = -1\npull = "sideways"\nhold_s = 0.1', ["pin:", "pull:", "hold_s:"]),
])
def test_the_status_led_and_button_say_every_bad_value_too(
        table: str, body: str, expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[gateway.led] and [gateway.button] (gateway/indicator.py) stopped at their first bad value."""
    path = tmp_path / "koto.toml"
    path.write_text(HEAD.replace('state_dir = "state"\n', f'state_dir = "state"\n[gateway.{table}]\n{body}\n')
                    + GOOD_METER)
    code, lines, err = check(path, capsys)
    assert code == 1
    assert len(lines) == len(expected), lines
    for line, said in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}: gateway.{table}.{said}"), (said, line)
    assert f"{path}: {len(expected)} problems; nothing was started" in err
