"""Which UART a port is, read from the device tree as Raspberry Pi OS's udev rule reads it (raspberrypi-sys-mods,
99-com.rules): a Pi 5's /dev/serial0 is its debug connector until `dtparam=uart0_console`, and a Pi 3 or 4's ttyAMA0
is the Bluetooth chip's while Bluetooth is on. Either opens, and a meter wired to GPIO 14/15 is never heard.

No Pi here: the two trees below are the files a Pi 5 and a Pi 4 have (`/proc/device-tree/aliases/*`, NUL-ended
node paths, and `/sys/class/tty/*/device/of_node`, a link into `/sys/firmware/devicetree/base`), with the node
paths of their kernels' device trees (bcm2712-rpi.dtsi, bcm2711-rpi-4-b.dts)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from drivers import pi_uart
from drivers.modbus_sim import ModbusSimulator, SimMeter
from drivers.pi_uart import not_the_pins, uart_role
from tests.drivers.test_modbus_bus import meter

PI5_DEBUG = "/soc@107c000000/serial@7d001000"
PI5_UART0 = "/axi/pcie@120000/rp1/serial@30000"
PI4_PL011 = "/soc/serial@7e201000"
PI4_MINI = "/soc/serial@7e215040"


def pi(tmp: Path, aliases: dict[str, str], ttys: dict[str, str]) -> tuple[Path, Path]:
    """A device tree's aliases and the ttys' nodes, as the kernel shows them: (sys_tty, device_tree)."""
    sys_root, device_tree = tmp / "sys", tmp / "proc-device-tree"
    (device_tree / "aliases").mkdir(parents=True)
    for name, node in aliases.items():
        (device_tree / "aliases" / name).write_bytes(node.encode() + b"\0")
    for tty, node in ttys.items():
        device = sys_root / "class" / "tty" / tty / "device"
        device.mkdir(parents=True)
        (device / "of_node").symlink_to(f"../../../../firmware/devicetree/base{node}")
    return sys_root / "class" / "tty", device_tree


def tty_of(port: str) -> str:
    return os.path.basename(os.path.realpath(port))


def test_a_pi_5s_serial0_is_its_debug_connector_and_ttyama0_the_pins(tmp_path: Path) -> None:
    sys_tty, dt = pi(tmp_path, {"serial0": PI5_UART0, "uart0": PI5_UART0, "uart10": PI5_DEBUG, "console": PI5_DEBUG},
                     {"ttyAMA10": PI5_DEBUG, "ttyAMA0": PI5_UART0})
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "ttyAMA10").touch()
    (dev / "serial0").symlink_to("ttyAMA10")  # udev: the tty whose node is the console alias
    assert uart_role(str(dev / "serial0"), sys_tty, dt) == "debug"
    what, fix = not_the_pins(str(dev / "serial0"), sys_tty, dt) or ("", "")
    assert what == f"{dev / 'serial0'} is ttyAMA10, the Raspberry Pi 5's debug connector UART, not GPIO 14/15"
    assert "[pi5] and dtparam=uart0_console" in fix
    assert uart_role("/dev/ttyAMA0", sys_tty, dt) is None  # GPIO 14/15's, with dtparam=uart0=on


def test_a_pi_4s_ttyama0_is_the_bluetooth_chips_and_serial0_the_mini_uart_on_the_pins(tmp_path: Path) -> None:
    sys_tty, dt = pi(tmp_path, {"serial0": PI4_MINI, "serial1": PI4_PL011, "uart0": PI4_PL011, "uart1": PI4_MINI,
                                "bluetooth": f"{PI4_PL011}/bluetooth"},
                     {"ttyAMA0": PI4_PL011, "ttyS0": PI4_MINI})
    assert uart_role("/dev/ttyAMA0", sys_tty, dt) == "bluetooth"
    assert (not_the_pins("/dev/ttyAMA0", sys_tty, dt) or ("",))[0] == (
        "/dev/ttyAMA0 is ttyAMA0, the Bluetooth chip's UART on this Pi, not GPIO 14/15")
    assert uart_role("/dev/ttyS0", sys_tty, dt) is None
    # with dtoverlay=disable-bt there is no bluetooth alias: ttyAMA0 is on the pins
    (dt / "aliases" / "bluetooth").unlink()
    assert uart_role("/dev/ttyAMA0", sys_tty, dt) is None


def test_a_machine_without_a_device_tree_has_nothing_to_say(pty_port: str) -> None:
    """This machine's own /sys and /proc: a pty has no device-tree node."""
    assert uart_role(pty_port) is None and not_the_pins(pty_port) is None
    assert uart_role("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0") is None


async def test_the_journal_says_once_that_the_meters_port_is_the_debug_connector(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon opens the port fine and the meter's polls would only time out: the first open says why (here a
    real pymodbus server answers on the pty, which the device tree below calls a Pi 5's debug UART)."""
    async with ModbusSimulator([SimMeter("sdm120", 1)]) as sim:
        tty = tty_of(sim.port)
        sys_tty, dt = pi(tmp_path, {"uart10": PI5_DEBUG}, {tty: PI5_DEBUG})
        monkeypatch.setattr(pi_uart, "SYS_TTY", sys_tty)
        monkeypatch.setattr(pi_uart, "DEVICE_TREE", dt)
        caplog.set_level(logging.WARNING, "koto.drivers")
        async with meter(sim, 1, "sdm120") as src:
            assert await src.poll_once()
            assert await src.poll_once()
    said = [r.getMessage() for r in caplog.records if "debug connector" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"{sim.port} is {tty}, the Raspberry Pi 5's debug connector UART, not GPIO 14/15; add")


async def test_discover_says_why_a_pi_5s_serial0_is_not_probed_and_what_to_do(
        tmp_path: Path, pty_port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`koto discover` leaves a Pi 5's /dev/serial0 out while it is the debug connector (a login console: probing
    it at 9600 baud writes Modbus frames into it), and says so, or an installer who wired GPIO 14/15 is left to
    wonder why the pins' UART is not in the list."""
    from gateway.discover import discover_report

    link = tmp_path / "serial0"
    link.symlink_to(pty_port)
    sys_tty, dt = pi(tmp_path, {"uart10": PI5_DEBUG}, {tty_of(pty_port): PI5_DEBUG})
    monkeypatch.setattr(pi_uart, "PI_UART", str(link))
    monkeypatch.setattr(pi_uart, "SYS_TTY", sys_tty)
    monkeypatch.setattr(pi_uart, "DEVICE_TREE", dt)
    report = await discover_report(ports=None, addresses=[], bauds=[], timeout_s=0.1, ble_seconds=0, gpio_pins=[],
                                   pin_factory=None)
    said = f"  not probed: {link} is {tty_of(pty_port)}, the Raspberry Pi 5's debug connector UART, not GPIO 14/15; "
    assert said + "to read a meter on the pins, add the lines [pi5] and dtparam=uart0_console" in report.text
