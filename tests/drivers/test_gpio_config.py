"""Config validation (every error names the key and what is allowed), pin factory choice, discover helper."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from drivers.base import build_source
from drivers.errors import BackendUnavailable, DriverConfigError
from drivers.gpio import Mcp3008Source, Relay, S0PulseSource, SignalSource
from drivers.gpio.sim import ScriptedPin, mock_factory
from drivers.pins import factory_name, lgpio_workdir_problem, read_input_states, select_pin_factory
from koto.clock import ManualClock


def build(cfg: dict[str, Any], **kw: Any) -> Any:
    return build_source("src", cfg, clock=ManualClock(), file="/etc/koto/koto.toml", **kw)


@pytest.mark.parametrize(("cfg", "key", "words"), [
    ({"driver": "s0", "imp_per_kwh": 1000}, "pin", "missing"),
    ({"driver": "s0", "pin": 17}, "imp_per_kwh", "missing"),
    ({"driver": "s0", "pin": 40, "imp_per_kwh": 1000}, "pin", "0 to 27"),
    ({"driver": "s0", "pin": 17, "imp_per_kwh": 0}, "imp_per_kwh", "above 0"),
    ({"driver": "s0", "pin": 17, "imp_per_kwh": 1000, "bounce_ms": 30}, "bounce_ms", "30 ms S0 pulse width"),
    ({"driver": "s0", "pin": 17, "imp_per_kwh": 1000, "bounce": 5}, "bounce", "allowed: active, bounce_ms"),
    ({"driver": "s0", "pin": 17, "imp_per_kwh": 1000, "pull": "none"}, "active", 'pull = "none"'),
    ({"driver": "s0", "pin": 17, "imp_per_kwh": 1000, "pull": "sideways"}, "pull", "up, down, none"),
    ({"driver": "gpio_signal", "pin": 4, "active_value": "x", "inactive_value": "x"}, "inactive_value", "same"),
    ({"driver": "gpio_signal", "pin": True}, "pin", "BCM GPIO number"),
    ({"driver": "mcp3008", "channel": 8, "gain": 1}, "channel", "0 to 7"),
    ({"driver": "mcp3008", "channel": 0}, "gain", "points"),
    ({"driver": "mcp3008", "channel": 0, "points": [[1, 2]]}, "points", "two [raw, value] pairs"),
    ({"driver": "mcp3008", "channel": 0, "points": [[5, 0], [5, 9]]}, "points", "different raw"),
    ({"driver": "mcp3008", "channel": 0, "gain": 1, "quantity": "volts"}, "quantity", "power, analog"),
])
def test_bad_config_names_the_file_the_key_and_what_is_allowed(cfg: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(DriverConfigError) as e:
        build(cfg)
    assert e.value.key == key
    assert words in e.value.problem
    assert str(e.value).startswith("/etc/koto/koto.toml: source 'src': ")


def test_good_config_builds_each_driver_through_the_registry() -> None:
    f = mock_factory()
    s0 = build({"driver": "s0", "pin": 17, "imp_per_kwh": 800, "bounce_ms": 3}, pin_factory=f, start_count=42)
    assert isinstance(s0, S0PulseSource) and s0.count == 42 and s0.bounce_ns == 3_000_000
    sig = build({"driver": "gpio_signal", "pin": 4, "signal": "heater"}, pin_factory=f)
    assert isinstance(sig, SignalSource) and sig.signal == "heater" and sig.bounce_ns == 50_000_000
    adc = build({"driver": "mcp3008", "channel": 1, "points": [[3, 0], [700, 2000]]}, pin_factory=f)
    assert isinstance(adc, Mcp3008Source) and adc.calibration.milli(adc.calibration.gain * 0 + 3) == 0


def test_relay_config() -> None:
    r = Relay.from_config("washer-relay", {"pin": 21, "active_high": False})
    assert (r.pin, r.active_high, r.wiring) == (21, False, "nc")
    with pytest.raises(DriverConfigError) as e:
        Relay.from_config("washer-relay", {"pin": 21, "wiring": "open"})
    assert e.value.key == "wiring" and "nc, no" in e.value.problem


def test_pin_factory_name_comes_from_config_then_environment() -> None:
    assert factory_name(None, {}) == "lgpio"
    assert factory_name(None, {"GPIOZERO_PIN_FACTORY": "mock"}) == "mock"
    assert factory_name("lgpio", {"GPIOZERO_PIN_FACTORY": "mock"}) == "lgpio"
    with pytest.raises(DriverConfigError, match=r"GPIOZERO_PIN_FACTORY.*rpigpio.*lgpio, mock"):
        factory_name(None, {"GPIOZERO_PIN_FACTORY": "rpigpio"})
    assert isinstance(select_pin_factory("mock").pin(5), ScriptedPin)


def test_lgpio_without_a_usable_working_directory_is_refused_in_plain_words(tmp_path: Path) -> None:
    missing = {"LG_WD": str(tmp_path / "nope")}
    assert "does not exist" in (lgpio_workdir_problem(missing) or "")
    with pytest.raises(BackendUnavailable, match="LG_WD"):
        select_pin_factory("lgpio", env=missing)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    problem = lgpio_workdir_problem({"LG_WD": str(ro)})
    if os.geteuid() != 0:  # root may write anywhere, so only a normal user can see this one
        assert problem is not None and "not writable" in problem and "WorkingDirectory=" in problem
    assert lgpio_workdir_problem({"LG_WD": str(tmp_path)}) is None


def test_lgpio_never_falls_back_silently(tmp_path: Path) -> None:
    # This machine is not a Pi (and may lack lgpio): the answer must be an error, never another factory.
    try:
        factory = select_pin_factory("lgpio", env={"LG_WD": str(tmp_path)})
    except BackendUnavailable as e:
        assert str(e)
    else:  # pragma: no cover - only on a real Pi
        assert type(factory).__name__ == "LGPIOFactory"


def test_read_input_states_for_discover() -> None:
    f = mock_factory()
    f.pin(22).drive_high()
    f.pin(23).drive_low()
    states = {s.pin: s for s in read_input_states([22, 23], f, pull="none")}
    assert (states[22].high, states[23].high) == (True, False)
    (pulled,) = read_input_states([17], f)  # pull-up: an open S0 output reads high
    assert pulled.high is True
    (bad,) = read_input_states([99], f)
    assert bad.high is None and "99" in bad.problem
    # Released again: the pins can be claimed by a source afterwards.
    assert read_input_states([22], f, pull="none")[0].high is True
