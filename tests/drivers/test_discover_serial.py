"""`discover` finds simulated meters on a pty, names their model and prints a config block that builds."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from drivers.base import build_source
from drivers.discover_serial import Found, PortInfo, config_block, discover, list_ports
from drivers.modbus import ModbusMeterSource
from drivers.modbus_sim import ModbusSimulator, SimMeter
from koto.clock import ManualClock
from tests.support.slow import scaled


async def test_discover_names_an_sdm120_sdm630_and_pzem_and_skips_empty_addresses() -> None:
    meters = [SimMeter("sdm120", 1), SimMeter("sdm630", 2), SimMeter("pzem004t", 5)]
    async with ModbusSimulator(meters) as sim:
        found = await discover([sim.port], addresses=[1, 2, 3, 5], bauds=[9600], timeout_s=scaled(0.1))
        assert [(f.address, f.model) for f in found] == [(1, "sdm120"), (2, "sdm630"), (5, "pzem004t")]
        assert all(f.port == sim.port and f.baud == 9600 for f in found)

        block = config_block(found)
        sources = tomllib.loads(block)["appliance"]["sources"]
        assert sources["meter-1"] == {"driver": "modbus", "port": sim.port, "address": 1, "model": "sdm120",
                                      "baud": 9600}
        # the pasted block builds working sources
        src = build_source("meter-1", sources["meter-1"], clock=ManualClock())
        assert isinstance(src, ModbusMeterSource)
        async with src:
            assert len(await src.poll_once()) == 6


async def test_a_port_that_cannot_be_opened_finds_nothing(tmp_path: object) -> None:
    assert await discover(["/nonexistent/ttyUSB9"], addresses=[1], bauds=[9600], timeout_s=0.05) == []


def test_unknown_device_gets_a_commented_block_and_empty_result_a_hint() -> None:
    block = config_block([Found("/dev/ttyUSB0", 7, 9600, None, "answers, but fits no known model")])
    assert tomllib.loads(block) == {} and "map =" in block and "address = 7" in block
    assert "no Modbus meter answered" in config_block([])


def test_list_ports_returns_port_descriptions() -> None:
    for p in list_ports():
        assert p.device and p.stable_path


def test_the_pis_own_uart_is_listed_as_serial0_which_pyserial_does_not_list(tmp_path: Path) -> None:
    """On a Pi 3 or 4 with Bluetooth on, /dev/serial0 points to the mini UART (ttyS0), which pyserial hides as a
    "platform" port; discovery and the household's pairing page list the ports it gives. A pty stands for it."""
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        link = tmp_path / "serial0"
        assert [p for p in list_ports(str(link)) if p.device == tty] == []  # no link: not listed
        link.symlink_to(tty)
        listed = [p for p in list_ports(str(link)) if p.device == tty]
        assert listed == [PortInfo(tty, "the Pi's UART on GPIO 14/15", "", str(link))]
    finally:
        os.close(master)
        os.close(slave)


def test_a_pi_5s_debug_connector_and_a_bluetooth_uart_are_not_listed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery probes what it lists at 9600 baud: a Pi 5's /dev/serial0 before dtparam=uart0_console is its debug
    connector (a login console), a Pi 3 or 4's ttyAMA0 the Bluetooth chip's UART. The device trees are a Pi's files
    (tests/drivers/test_pi_uart.py); a pty stands for the UART."""
    from drivers import pi_uart
    from tests.drivers.test_pi_uart import PI5_DEBUG, PI5_UART0, pi

    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        link = tmp_path / "serial0"
        link.symlink_to(tty)
        for where, node, listed in (("pi5", PI5_DEBUG, False), ("pi5-on-the-pins", PI5_UART0, True)):
            sys_tty, dt = pi(tmp_path / where, {"uart10": PI5_DEBUG}, {os.path.basename(tty): node})
            monkeypatch.setattr(pi_uart, "SYS_TTY", sys_tty)
            monkeypatch.setattr(pi_uart, "DEVICE_TREE", dt)
            assert bool([p for p in list_ports(str(link)) if p.device == tty]) is listed
    finally:
        os.close(master)
        os.close(slave)
