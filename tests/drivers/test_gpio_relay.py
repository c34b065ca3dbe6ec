"""The enforcement relay: safe (appliance powered) on start and stop, and never cuts a running cycle."""

from __future__ import annotations

import pytest

from drivers.gpio import Relay
from drivers.gpio.sim import mock_factory

PIN = 21


@pytest.mark.parametrize(("active_high", "coil_on_level"), [(True, True), (False, False)])
def test_nc_wiring_starts_powered_blocks_only_idle_starts_and_stops_powered(active_high: bool,
                                                                           coil_on_level: bool) -> None:
    factory = mock_factory()
    pin = factory.pin(PIN)
    relay = Relay("washer", pin=PIN, pin_factory=factory, active_high=active_high)
    with relay:
        assert relay.powered and not relay.coil_energised
        assert pin.function == "output" and pin.state == (not coil_on_level)

        assert relay.allow_start(False, running=True) is True  # a cycle is running: never cut it
        assert pin.state == (not coil_on_level) and relay.kept_running == 1

        assert relay.allow_start(False, running=False) is False  # idle and not entitled: refuse the start
        assert relay.coil_energised and pin.state == coil_on_level and relay.refused_starts == 1

        assert relay.allow_start(True, running=False) is True
        assert pin.state == (not coil_on_level)

        relay.allow_start(False, running=False)  # blocked when the gateway stops...
    assert relay.powered  # ...stop puts it back to the safe state first
    assert pin.function == "input"  # and releases the pin
    assert [s.state for s in pin.states][-2:] == [coil_on_level, not coil_on_level]


def test_an_active_high_nc_relay_never_energises_the_coil_on_open() -> None:
    factory = mock_factory()
    pin = factory.pin(PIN)
    with Relay("dryer", pin=PIN, pin_factory=factory, active_high=True):
        pass
    assert all(s.state is False for s in pin.states)  # the line was never driven high


def test_no_wiring_is_powered_while_energised_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    factory = mock_factory()
    pin = factory.pin(PIN)
    with caplog.at_level("WARNING"), Relay("oven", pin=PIN, pin_factory=factory, wiring="no") as relay:
        assert relay.powered and relay.coil_energised and pin.state is True
        relay.allow_start(False, running=False)
        assert pin.state is False
    assert "normally-closed" in caplog.text


def test_a_blocked_relay_stays_blocked_if_asked_while_running() -> None:
    factory = mock_factory()
    with Relay("washer", pin=PIN, pin_factory=factory) as relay:
        relay.allow_start(False, running=False)
        assert relay.allow_start(False, running=True) is False  # it was never running on our power; no change
