"""Two sources that would fight over one piece of hardware are refused when the config loads, naming file and key.

Found at load rather than when the second source opens: an SDM120 (whose map defaults to 2400 baud) and an SDM630
at 9600 on one RS-485 port used to start, log "running" and then hang the daemon for ever (issue 10).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from tests.support.paths import REPO

PORT = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"


def gateway(*appliances: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": {"id": "gw-1"}, "appliance": list(appliances)}


def appliance(aid: str, profile: str = "washing_machine", relay: dict[str, Any] | None = None,
              **sources: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = {"id": aid, "profile": profile, "sources": sources}
    if relay is not None:
        app["relay"] = relay
    return app


def refused(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, file="koto.toml")
    assert e.value.file == "koto.toml"
    return e.value


def test_an_sdm120_at_its_default_2400_baud_and_an_sdm630_at_9600_on_one_bus_are_refused() -> None:
    e = refused(gateway(
        appliance("washer", washer={"driver": "modbus", "model": "sdm630", "port": PORT, "address": 2, "baud": 9600}),
        appliance("dryer", dryer={"driver": "modbus", "model": "sdm120", "port": PORT, "address": 3}),
    ))
    assert e.key == "appliance.dryer.sources.dryer.baud"
    assert "9600 baud" in e.problem and "2400 baud" in e.problem
    assert "appliance.washer.sources.washer" in e.problem


def test_meters_on_one_bus_with_the_same_line_settings_share_it_and_the_example_config_loads() -> None:
    raw = gateway(
        appliance("washer", washer={"driver": "modbus", "model": "sdm630", "port": PORT, "address": 2}),
        appliance("dryer", dryer={"driver": "modbus", "model": "sdm120", "port": PORT, "address": 3, "baud": 9600}),
    )
    assert len(parse_config(raw).appliances) == 2
    load_config(REPO / "deploy" / "koto.example.toml")


def test_one_port_named_through_a_symlink_is_the_same_bus(tmp_path: Path) -> None:
    link = tmp_path / "by-id-link"
    os.symlink(tmp_path / "ttyUSB0", link)
    e = refused(gateway(
        appliance("washer", washer={"driver": "modbus", "model": "sdm630", "port": str(tmp_path / "ttyUSB0")}),
        appliance("dryer", dryer={"driver": "modbus", "model": "sdm120", "port": str(link)}),
    ))
    assert e.key == "appliance.dryer.sources.dryer.baud"
    # Named as the installer wrote it (a /dev/serial/by-id/ link), with the other name of the same adapter; the
    # resolved /dev/ttyUSB0 alone left them looking for a port they never wrote.
    assert e.problem.startswith(f"serial port {link} (the same device as {tmp_path / 'ttyUSB0'}) is already used")


def test_a_line_protocol_owns_its_port() -> None:
    e = refused(gateway(
        appliance("washer", washer={"driver": "modbus", "model": "sdm630", "port": PORT}),
        appliance("oven", "oven", oven={"driver": "line", "port": PORT}),
    ))
    assert e.key == "appliance.oven.sources.oven.port"
    assert e.problem.startswith(f"serial port {PORT} is already used")


def test_one_gpio_pin_for_two_sources_is_refused() -> None:
    e = refused(gateway(
        appliance("kettle", "kettle", k1={"driver": "s0", "pin": 17, "imp_per_kwh": 1000}),
        appliance("oven", "oven", k2={"driver": "s0", "pin": 17, "imp_per_kwh": 1000}),
    ))
    assert (e.key, e.problem.split(" is")[0]) == ("appliance.oven.sources.k2.pin", "GPIO 17")


def test_a_relay_on_a_pin_a_source_reads_is_refused() -> None:
    e = refused(gateway(
        appliance("washer", relay={"pin": 27},
                  meter={"driver": "modbus", "model": "sdm120", "port": PORT},
                  door={"driver": "gpio_signal", "pin": 27, "signal": "door"}),
    ))
    assert e.key == "appliance.washer.relay.pin"


def test_an_s0_input_on_the_mcp3008s_chip_select_is_refused_and_two_channels_of_one_chip_are_fine() -> None:
    clamp = {"driver": "mcp3008", "channel": 0, "gain": 1}
    ok = gateway(appliance("ac", "air_conditioner", c0=clamp), appliance("oven", "oven", c1={**clamp, "channel": 1}))
    assert len(parse_config(ok).appliances) == 2
    e = refused(gateway(
        appliance("ac", "air_conditioner", c0=clamp),
        appliance("kettle", "kettle", k={"driver": "s0", "pin": 8, "imp_per_kwh": 1000}),
    ))
    assert e.key == "appliance.kettle.sources.k.pin"
    e = refused(gateway(appliance("ac", "air_conditioner", c0=clamp), appliance("oven", "oven", c1=clamp)))
    assert e.key == "appliance.oven.sources.c1.channel"


def test_one_ble_device_for_two_sources_is_refused_whatever_the_letter_case() -> None:
    e = refused(gateway(
        appliance("ac", "air_conditioner", plug={"driver": "bthome", "address": "A4:C1:38:00:00:AC"}),
        appliance("oven", "oven", plug2={"driver": "bthome", "address": "a4:c1:38:00:00:ac"}),
    ))
    assert e.key == "appliance.oven.sources.plug2.address"


def test_a_source_with_a_bad_key_is_named_when_the_config_loads() -> None:
    from drivers.errors import DriverConfigError

    with pytest.raises(DriverConfigError) as e:
        parse_config(gateway(appliance("washer", m={"driver": "modbus", "model": "sdm120", "port": PORT,
                                                    "device_id": 1})), file="koto.toml")
    assert (e.value.file, e.value.source, e.value.key) == ("koto.toml", "m", "device_id")


def test_an_s0_meter_on_a_pin_of_the_pis_uart_is_refused_while_a_meter_reads_the_uart() -> None:
    """GPIO 14 and 15 are the Pi's UART (/dev/serial0): a source on that port uses them, and a pulse input there
    would take them from it (gpiozero makes the pin a plain input, and the meter goes quiet)."""
    washer = {"driver": "modbus", "model": "pzem004t", "port": "/dev/serial0", "address": 1}
    s0 = {"driver": "s0", "pin": 14, "imp_per_kwh": 1000}
    e = refused(gateway(appliance("washer", washer=washer), appliance("kettle", "kettle", s0=s0)))
    assert e.key == "appliance.kettle.sources.s0.pin"
    assert e.problem == ("GPIO 14 (TXD of the Pi's UART, /dev/serial0) is already used by another source; each can "
                         "be used by only one (see appliance.washer.sources.washer)")
    e = refused(gateway(appliance("kettle", "kettle", s0={**s0, "pin": 15}), appliance("washer", washer=washer)))
    assert e.key == "appliance.washer.sources.washer.port"
    assert e.problem.startswith("GPIO 15 (RXD of the Pi's UART, /dev/serial0) is already used by another source")
    # two meters on the UART share its pins, as they share the bus; a pin beside them is free
    two = gateway(appliance("washer", washer=washer), appliance("dryer", dryer={**washer, "address": 2}),
                  appliance("kettle", "kettle", s0={**s0, "pin": 17}))
    assert len(parse_config(two).appliances) == 3


@pytest.mark.parametrize("port", ["/dev/ttyAMA0", "/dev/ttyS0"])
def test_the_uarts_that_can_be_on_gpio_14_and_15_claim_the_pins_by_name_on_any_machine(port: str) -> None:
    """A Pi 5's GPIO UART is /dev/ttyAMA0 (raspi-config's dtparam=uart0=on), a Pi 3 or 4's mini UART /dev/ttyS0: a
    config naming them is checked on a laptop too, where no /dev/serial0 says which device it is."""
    meter = {"driver": "modbus", "model": "sdm120", "port": port, "address": 1}
    e = refused(gateway(appliance("washer", washer=meter),
                        appliance("kettle", "kettle", s0={"driver": "s0", "pin": 15, "imp_per_kwh": 1000})))
    assert e.problem.startswith(f"GPIO 15 (RXD of the Pi's UART, {port}) is already used by another source")


def test_the_device_serial0_points_to_is_the_pis_uart_under_its_own_name_too(tmp_path: Path) -> None:
    """`port = "/dev/ttyS0"` on a Pi 4 with Bluetooth on is the same UART as /dev/serial0 (a pty stands for it)."""
    from drivers.pi_uart import pin_claims

    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        link = tmp_path / "serial0"
        assert pin_claims(tty, "port", str(link)) == ()  # no /dev/serial0: not the Pi's UART
        link.symlink_to(tty)
        assert [c.resource for c in pin_claims(tty, "port", str(link))] == ["gpio:14", "gpio:15"]
        assert pin_claims(str(tmp_path / "ttyUSB0"), "port", str(link)) == ()
    finally:
        os.close(master)
        os.close(slave)
