"""The status LED and the pairing button (gpiozero MockFactory pins, time passed in): each state has its pattern, a
3 s press enters pairing once, the pins are checked with the sources' at config load, and nothing of it can stop
the gateway."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.errors import ConfigError
from gateway.indicator import (
    ERROR,
    OFFLINE,
    ONLINE,
    PAIRING,
    ButtonConfig,
    Indicator,
    LedConfig,
    pattern_for,
)
from gateway.state import StateDir

OK = {"state": "running", "cloud": {"connected": True}, "sources": {"m": {"state": "ok"}}, "ledger": {}}


def test_each_state_has_its_pattern_pairing_first() -> None:
    assert pattern_for(OK) is ONLINE
    assert pattern_for({**OK, "cloud": None}) is ONLINE  # metering locally is all a local-only gateway does
    assert pattern_for({**OK, "cloud": {"connected": False}}) is OFFLINE
    assert pattern_for({**OK, "sources": {"m": {"state": "reconnecting"}}}) is ERROR
    assert pattern_for({**OK, "sources": {"m": {"state": "starting", "restarts": 0}}}) is ONLINE  # just started
    assert pattern_for({**OK, "sources": {"m": {"state": "starting", "restarts": 3}}}) is ERROR  # failing to open
    assert pattern_for({**OK, "ledger": {"failing": True}, "cloud": {"connected": False}}) is ERROR
    assert pattern_for({**OK, "sources": {"m": {"state": "reconnecting"}}}, pairing=True) is PAIRING
    assert pattern_for({**OK, "state": "stopped"}, pairing=True).name == "off"


def _lit_over(ind: Indicator, factory: Any, pin: int, times: list[float]) -> list[Any]:
    out = []
    for t in times:
        ind.step(t)
        out.append(factory.pin(pin).state)
    return out


@pytest.mark.parametrize(("pattern", "lit_at", "dark_at"), [
    (ONLINE, [0.0, 0.5, 1.7, 60.0], []),
    (OFFLINE, [0.0, 0.9, 2.05, 2.5], [1.05, 1.5, 3.9]),
    (PAIRING, [0.0, 0.1, 0.45, 0.5], [0.25, 0.3, 0.65]),
    (ERROR, [0.0, 0.1, 0.45, 0.5, 2.05, 2.1], [0.25, 0.3, 0.65, 1.0, 1.9]),  # two short flashes, then dark
])
def test_the_led_pin_follows_the_pattern_over_time(pattern: Any, lit_at: list[float], dark_at: list[float]) -> None:
    factory = MockFactory()
    with Indicator(LedConfig(pin=22), None, pin_factory=factory) as ind:
        ind.show(pattern, 100.0)
        assert _lit_over(ind, factory, 22, [100 + t for t in lit_at]) == [True] * len(lit_at)
        assert _lit_over(ind, factory, 22, [100 + t for t in dark_at]) == [False] * len(dark_at)
        ind.show(pattern, 200.0)  # shown again: keeps its phase, no restart
        assert ind._since == 100.0
    assert factory.pin(22).state is False  # closed: dark


def test_a_dimmed_led_is_driven_by_pwm_and_an_active_low_one_inverted() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    with Indicator(LedConfig(pin=12, pwm=True, brightness=0.3), None, pin_factory=factory) as ind:
        ind.show(OFFLINE, 0.0)
        assert _lit_over(ind, factory, 12, [0.5, 1.5, 2.5]) == [pytest.approx(0.3), 0, pytest.approx(0.3)]
    low = MockFactory()
    with Indicator(LedConfig(pin=22, active_high=False), None, pin_factory=low) as ind:
        ind.show(ONLINE, 0.0)
        assert _lit_over(ind, low, 22, [0.0]) == [False]  # lit = pin low (LED wired to 3.3 V)


def test_holding_the_button_3_s_asks_for_pairing_once_per_press() -> None:
    factory = MockFactory()
    asked: list[float] = []
    ind = Indicator(None, ButtonConfig(pin=23), pin_factory=factory, on_long_press=lambda: asked.append(1))
    with ind:
        pin = factory.pin(23)
        pin.drive_low()  # pressed (a button to ground, the pull-up)
        for t in (0.0, 1.0, 2.0, 2.95):
            ind.step(t)
        assert asked == []
        for t in (3.0, 3.05, 5.0, 30.0):  # held on: still one request
            ind.step(t)
        assert len(asked) == 1
        pin.drive_high()
        ind.step(30.1)
        pin.drive_low()  # a short press does nothing
        ind.step(31.0)
        ind.step(32.0)
        pin.drive_high()
        ind.step(32.5)
        assert len(asked) == 1 and ind.long_presses == 1
        pin.drive_low()
        ind.step(40.0)
        ind.step(43.0)
        assert len(asked) == 2


async def test_run_shows_the_state_and_a_long_press_shows_pairing_at_once() -> None:
    factory = MockFactory()
    now = [0.0]
    pairing = [False]
    led, button = LedConfig(pin=22), ButtonConfig(pin=23, hold_s=1.0)
    ind = Indicator(led, button, pin_factory=factory, on_long_press=lambda: pairing.__setitem__(0, True))

    def clock() -> float:
        now[0] += 0.05
        return now[0]

    task = asyncio.create_task(ind.run(lambda: {**OK, "cloud": {"connected": False}}, lambda: pairing[0],
                                       clock=clock, tick_s=0.001, every_s=10.0))
    await asyncio.sleep(0.05)
    assert ind.pattern is OFFLINE
    factory.pin(23).drive_low()
    for _ in range(200):
        await asyncio.sleep(0.002)
        if ind.pattern is PAIRING:
            break
    assert pairing[0] and ind.pattern is PAIRING  # well before the next look at the state (every 10 s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert factory.pin(22).state is False


async def test_a_pin_that_cannot_be_had_is_said_once_and_the_task_runs_on(caplog: pytest.LogCaptureFixture) -> None:
    from gpiozero import LED

    factory = MockFactory()
    held = LED(22, pin_factory=factory)  # another program has the pin
    ind = Indicator(LedConfig(pin=22), None, pin_factory=factory)
    with caplog.at_level(logging.WARNING, logger="koto.indicator"):
        task = asyncio.create_task(ind.run(lambda: OK))
        await asyncio.sleep(0.05)
    assert not task.done()  # a guard would turn an ended task into a gateway stop
    assert "cannot use GPIO 22" in caplog.text and "runs on without them" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held.close()


def _cfg(tmp: Path, **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"id": "gw-led", "state_dir": str(tmp / "state"), "batch_ms": 20, **gateway},
            "appliance": [{"id": "kettle", "profile": "kettle",
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 1000}}}]}


def test_led_and_button_pins_are_checked_with_the_sources_pins(tmp_path: Path) -> None:
    cfg = parse_config(_cfg(tmp_path, led={"pin": 22}, button={"pin": 23, "hold_s": 5}), file="koto.toml")
    assert cfg.led == LedConfig(pin=22) and cfg.button == ButtonConfig(pin=23, hold_s=5.0)
    with pytest.raises(ConfigError, match=r"koto.toml: appliance.kettle.sources.k.pin: .*17.*gateway.led"):
        parse_config(_cfg(tmp_path, led={"pin": 17}), file="koto.toml")
    with pytest.raises(ConfigError, match=r"koto.toml: gateway.button.pin: GPIO 22 is already used by gateway.led"):
        parse_config(_cfg(tmp_path, led={"pin": 22}, button={"pin": 22}), file="koto.toml")
    with pytest.raises(ConfigError, match=r"koto.toml: gateway.led.colour: unknown key"):
        parse_config(_cfg(tmp_path, led={"pin": 22, "colour": "red"}), file="koto.toml")
    with pytest.raises(ConfigError, match=r"koto.toml: gateway.button.hold_s: 0.1 is out of range"):
        parse_config(_cfg(tmp_path, button={"pin": 23, "hold_s": 0.1}), file="koto.toml")
    assert parse_config(_cfg(tmp_path), file="koto.toml").led is None  # off unless configured


async def test_the_running_gateway_lights_the_led_and_a_long_press_enters_pairing_mode(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from drivers.gpio.sim import mock_factory
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    factory = mock_factory()
    cfg = parse_config(_cfg(tmp_path, led={"pin": 22}, button={"pin": 23, "hold_s": 0.5}), file="koto.toml")
    gw = Gateway(cfg, clock=SystemClock(), backends={"pin_factory": factory}, sync_enabled=False)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="koto"):
        run = asyncio.create_task(gw.run(stop))
        try:
            await asyncio.sleep(0.3)
            assert factory.pin(22).state is True  # local only, the source starting: steady on
            factory.pin(23).drive_low()
            await asyncio.sleep(0.8)
            assert gw.pairing.active  # the page offers "add an appliance" (gateway/pairing.py)
            assert gw.household.indicator is not None and gw.household.indicator.pattern is PAIRING
        finally:
            stop.set()
            await run
    assert "pairing mode requested by button" in caplog.text
    assert gw.household.indicator.long_presses == 1
    assert factory.pin(22).state is False  # stopped: dark
