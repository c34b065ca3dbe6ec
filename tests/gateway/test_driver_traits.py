"""A driver is one module plus one registry line: what the gateway must know about it (the energy its readings
carry, the backends it needs, whether it continues a count) is declared on its class, and the gateway reads it there."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from drivers.base import REGISTRY, EnergyKind, driver_class
from gateway.config import parse_config
from gateway.runner import production_backends
from metering.energy import Kind


def test_every_registered_driver_declares_its_traits_on_its_class() -> None:
    traits = {name: (c.driver, c.energy_kind, set(c.needs), c.takes_start_count, c.takes_channel)
              for name, c in ((n, driver_class(n)) for n in REGISTRY)}
    assert traits == {
        "s0": ("s0", "pulses", {"pin_factory"}, True, False),
        "gpio_signal": ("gpio_signal", "register", {"pin_factory"}, False, False),
        "mcp3008": ("mcp3008", "power", {"pin_factory"}, False, False),
        "modbus": ("modbus", "register", set(), False, True),
        "line": ("line", "register", set(), False, False),
        "bthome": ("bthome", "register", {"ble"}, False, False),
    }
    assert get_args(EnergyKind) == get_args(Kind)  # the drivers' energy kinds are the meter's


MINIMAL = {  # each driver's smallest valid table (sources are built, so checked, when the config loads)
    "s0": {"pin": 17, "imp_per_kwh": 1000},
    "gpio_signal": {"pin": 27},
    "mcp3008": {"channel": 0, "gain": 1},
    "modbus": {"model": "sdm120", "port": "/dev/ttyUSB0"},
    "line": {"port": "/dev/ttyACM0"},
    "bthome": {"address": "A4:C1:38:00:00:01"},
}


def config(*drivers: str) -> dict[str, object]:
    sources = {f"src-{i}": {"driver": d, **MINIMAL[d]} for i, d in enumerate(drivers)}
    return {"gateway": {"id": "gw-1"}, "appliance": [{"id": "a", "profile": "kettle", "sources": sources}]}


def test_the_gateway_builds_only_the_backends_its_drivers_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert production_backends(parse_config(config("modbus", "line"))) == {}
    assert set(production_backends(parse_config(config("modbus", "s0")))) == {"pin_factory"}
    assert set(production_backends(parse_config(config("mcp3008", "bthome")))) == {"pin_factory", "ble"}


@pytest.mark.parametrize(("driver", "kind"), [("s0", "pulses"), ("mcp3008", "power"), ("modbus", "register")])
def test_an_appliance_meters_by_its_energy_drivers_kind_unless_the_config_says(driver: str, kind: str) -> None:
    raw = config(driver)
    assert parse_config(raw).appliances[0].energy_kind == kind
    raw["appliance"][0]["energy_kind"] = "power"  # type: ignore[index]
    assert parse_config(raw).appliances[0].energy_kind == "power"


def test_the_gateway_names_the_appliances_channel_to_its_energy_source(tmp_path: Path) -> None:
    """An appliance on one phase of an SDM630: its Modbus source reads that phase's power and energy every poll."""
    from drivers.modbus import ModbusMeterSource
    from gateway.daemon import Gateway
    from gateway.state import StateDir
    from koto.clock import ManualClock

    StateDir(tmp_path).provision()
    modbus = {"driver": "modbus", "model": "sdm630", "port": "/dev/ttyUSB0"}
    cfg = parse_config({"gateway": {"id": "gw-1", "state_dir": str(tmp_path)}, "appliance": [
        {"id": "a", "profile": "kettle", "energy": "m", "channel": "L2", "sources": {"m": modbus}},
        {"id": "b", "profile": "kettle", "energy": "n", "sources": {"n": {**modbus, "address": 2}}}]})
    gw = Gateway(cfg, clock=ManualClock())
    try:
        a, b = gw._build_source("m"), gw._build_source("n")
    finally:
        gw.ledger.close()
    assert isinstance(a, ModbusMeterSource) and isinstance(b, ModbusMeterSource)
    assert (a.channel, b.channel) == ("L2", "")
