"""`koto doctor` on what keeps the service from a port whose mode is right: koto.service's device policy and the
kernel's serial console (a meter on the Pi's own UART), and the MCP3008's SPI device. Real ptys, the repository's
own unit file, this kernel's /proc/devices; the Pi's /proc/devices and cmdline as the files a Pi has."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gateway.doctor import Check, Context, make_context
from gateway.doctor_checks_hardware import check_serial_ports, check_spi
from gateway.doctor_devices import allowed, console_on, device_policy
from tests.drivers.test_pi_uart import PI4_PL011, PI5_DEBUG, PI5_UART0, pi
from tests.support.as_user import AS_ROOT

pytestmark = pytest.mark.skipif(not AS_ROOT, reason="judges files owned by root for the user nobody")

UNIT = Path(__file__).parents[2] / "systemd" / "koto.service"
USER = "nobody"
# /proc/devices of a Raspberry Pi 4 on Raspberry Pi OS bookworm (its character half), as the kernel lists it
PI_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
  7 vcs
 10 misc
 13 input
 89 i2c
128 ptm
136 pts
153 spi
166 ttyACM
188 ttyUSB
204 ttyAMA
254 gpiochip

Block devices:
  1 ramdisk
179 mmc
"""


def context(tmp: Path, source: str, *, unit: Path | None = UNIT) -> Context:
    cfg = tmp / "koto.toml"
    cfg.write_text('[gateway]\nid = "gw-doc"\nstate_dir = "state"\n\n[[appliance]]\nid = "washer"\n'
                   f'profile = "washing_machine"\n[appliance.sources.m]\n{source}\n')
    ctx = make_context(cfg, user=USER)
    if unit is not None:
        (tmp / "system").mkdir(exist_ok=True)
        ctx.unit_files = (Path(shutil.copy(unit, tmp / "system" / "koto.service")),)
    else:
        ctx.unit_files = ()
    ctx.drop_in_dirs = ()
    ctx.cmdline = tmp / "cmdline"
    ctx.cmdline.write_text("console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n")
    return ctx


def modbus(port: str) -> str:
    return f'driver = "modbus"\nmodel = "sdm120"\nport = "{port}"\naddress = 1'


def only(checks: list[Check]) -> Check:
    assert len(checks) == 1, checks
    return checks[0]


def drop_in(ctx: Context, text: str) -> None:
    folder = ctx.unit_files[0].parent / "koto.service.d"
    folder.mkdir(exist_ok=True)
    (folder / "override.conf").write_text(f"[Service]\n{text}\n")


def test_a_port_the_units_device_policy_leaves_out_is_named_with_the_drop_in_that_allows_it(
        tmp_path: Path, pty_port: str) -> None:
    """The port's mode lets nobody read and write it, but the unit's DevicePolicy=closed does not list it: inside
    the service the kernel refuses it. A pty stands for such a port (a USB-serial chip with its own driver)."""
    ctx = context(tmp_path, modbus(pty_port))
    c = only(check_serial_ports(ctx))
    rdev = os.stat(pty_port).st_rdev
    assert c.status == "fail"
    assert c.summary == (f"{pty_port} ({pty_port[5:]}, char {os.major(rdev)}:{os.minor(rdev)}) is not among the "
                         "devices koto.service lets the service open (char-gpiochip, char-ttyUSB, char-ttyACM, "
                         "char-ttyAMA, /dev/ttyS0, char-spi): the daemon gets 'Operation not permitted' however the "
                         "node's mode reads")
    assert c.fix == (f"allow it with a drop-in: sudo systemctl edit koto, add the two lines [Service] and "
                     f"DeviceAllow={pty_port} rw, then sudo systemctl restart koto")
    drop_in(ctx, f"DeviceAllow={pty_port} rw")  # the fix, as `systemctl edit` writes it
    assert only(check_serial_ports(ctx)).status == "ok"
    drop_in(ctx, "DeviceAllow=char-pts rw")  # or its whole group, by /proc/devices' name
    assert only(check_serial_ports(ctx)).status == "ok"
    drop_in(ctx, "DeviceAllow=char-pts r")  # read alone is not enough for a Modbus master
    assert only(check_serial_ports(ctx)).status == "fail"
    drop_in(ctx, "DeviceAllow=\nDeviceAllow=char-ttyUSB rw")  # an empty DeviceAllow= clears the unit's list
    assert "open (char-ttyUSB):" in only(check_serial_ports(ctx)).summary
    drop_in(ctx, "DevicePolicy=auto\nDeviceAllow=")  # no list and no closed policy: every device
    assert only(check_serial_ports(ctx)).status == "ok"


def test_without_an_installed_unit_there_is_no_device_policy_to_judge(tmp_path: Path, pty_port: str) -> None:
    ctx = context(tmp_path, modbus(pty_port), unit=None)
    assert only(check_serial_ports(ctx)).status == "ok"


def test_the_unit_lets_the_service_open_the_pis_own_uarts_and_nothing_else_of_theirs(tmp_path: Path) -> None:
    """The repository's koto.service against a Pi 4's /proc/devices: the PL011 UARTs (ttyAMA0 on a Pi 5's GPIO
    14/15, ttyAMA1-4 of the uart2-5 overlays), the mini UART ttyS0 that /dev/serial0 points to on a Pi 3 or 4 with
    Bluetooth on, USB adapters, SPI and GPIO; not the virtual consoles that share the mini UART's major."""
    devices = tmp_path / "devices"
    devices.write_text(PI_DEVICES)
    policy = device_policy((UNIT,), ())
    assert policy is not None and policy.restricted

    def may(major: int, minor: int) -> bool:
        return allowed(policy, os.makedev(major, minor), proc_devices=devices)

    assert may(204, 64) and may(204, 65)  # ttyAMA0, ttyAMA1
    assert may(188, 0) and may(166, 0)  # ttyUSB0, ttyACM0
    assert may(153, 0) and may(254, 0)  # spidev0.0, gpiochip0
    assert not may(4, 1) and not may(4, 63)  # tty1, tty63: the same major as ttyS0, not allowed
    assert not may(89, 1)  # i2c-1
    ttys0 = os.stat("/dev/ttyS0").st_rdev  # the mini UART is allowed by its node, which this machine has too
    assert os.major(ttys0) == 4 and allowed(policy, ttys0, proc_devices=devices)


def test_the_kernels_serial_console_on_the_meters_port(tmp_path: Path, pty_port: str) -> None:
    """Raspberry Pi OS boots with console=serial0,115200: once the UART is on, boot messages and a login prompt go
    out on the meter's bus. The port may be named by a symlink (/dev/serial0 -> ttyS0), as here."""
    link = tmp_path / "serial0"
    link.symlink_to(pty_port)
    ctx = context(tmp_path, modbus(str(link)), unit=None)
    console = f"console={pty_port[5:]},115200"
    ctx.cmdline.write_text(f"coherent_pool=1M 8250.nr_uarts=1 {console} console=tty1 rootwait -- {console}\n")
    c = only(check_serial_ports(ctx))
    assert c.status == "fail"
    assert c.summary == (f"{link} is the kernel's serial console ({console} on the kernel command line): boot "
                         "messages and a login prompt are sent to the meter's wires")
    assert c.fix.startswith("turn the serial console off and keep the port: sudo raspi-config nonint do_serial_cons 1")
    ctx.cmdline.write_text(f"console=tty1 rootwait -- {console}\n")  # after `--`: init's arguments, not a console
    assert only(check_serial_ports(ctx)).status == "ok"
    assert console_on(pty_port, ctx.cmdline) is None


def test_a_port_that_opens_but_is_not_gpio_14_and_15_fails(tmp_path: Path, pty_port: str) -> None:
    """A Pi 5's /dev/serial0 is its debug connector until dtparam=uart0_console; a Pi 4's ttyAMA0 is the Bluetooth
    chip's. Both open, so nothing else here fails, and the meter on the pins is never heard (the device trees are
    the files a Pi has: tests/drivers/test_pi_uart.py)."""
    link = tmp_path / "serial0"
    link.symlink_to(pty_port)
    ctx = context(tmp_path, modbus(str(link)), unit=None)
    tty = os.path.basename(pty_port)
    ctx.sys_tty, ctx.device_tree = pi(tmp_path / "pi5", {"uart10": PI5_DEBUG, "console": PI5_DEBUG}, {tty: PI5_DEBUG})
    c = only(check_serial_ports(ctx))
    assert (c.status, c.summary) == ("fail", f"{link} is {tty}, the Raspberry Pi 5's debug connector UART, not GPIO "
                                             "14/15: a meter wired to the pins is never heard")
    assert c.fix.startswith("add the lines [pi5] and dtparam=uart0_console at the end of /boot/firmware/config.txt")
    ctx.sys_tty, ctx.device_tree = pi(tmp_path / "pi4", {"bluetooth": f"{PI4_PL011}/bluetooth"}, {tty: PI4_PL011})
    c = only(check_serial_ports(ctx))
    assert c.status == "fail" and "the Bluetooth chip's UART on this Pi" in c.summary
    ctx.sys_tty, ctx.device_tree = pi(tmp_path / "pi5-on-the-pins", {"uart10": PI5_DEBUG}, {tty: PI5_UART0})
    assert only(check_serial_ports(ctx)).status == "ok"


MCP3008 = 'driver = "mcp3008"\nchannel = 0\npoints = [[3, 0], [700, 2000]]'


def test_an_mcp3008_without_spi_is_read_by_software_spi_and_says_how_to_turn_spi_on(tmp_path: Path,
                                                                                    pty_port: str) -> None:
    ctx = context(tmp_path, MCP3008)
    ctx.dev = tmp_path / "dev"
    ctx.dev.mkdir()
    c = only(check_spi(ctx))
    assert c.status == "warn"
    assert c.summary == (f"{ctx.dev / 'spidev0.0'} is not there: SPI is off, so gpiozero reads the MCP3008 by "
                         "toggling its pins itself (software SPI: slower, more CPU)")
    assert c.fix.startswith("turn SPI on: sudo raspi-config nonint do_spi 0")
    (ctx.dev / "spidev0.0").symlink_to(pty_port)  # a character device in its place (not of the spi group)
    c = only(check_spi(ctx))
    assert c.status == "fail" and "is not among the devices koto.service lets the service open" in c.summary
    drop_in(ctx, "DeviceAllow=char-pts rw")
    assert only(check_spi(ctx)).status == "ok"
    os.chmod(pty_port, 0o660)
    assert only(check_spi(ctx)).fix == "add nobody to the spi group: sudo usermod -aG spi nobody"


def test_no_mcp3008_no_spi_check(tmp_path: Path, pty_port: str) -> None:
    assert only(check_spi(context(tmp_path, modbus(pty_port)))).status == "skip"


def test_a_missing_serial0_is_the_pis_uart_switched_off(tmp_path: Path) -> None:
    if os.path.exists("/dev/serial0"):
        pytest.skip("this machine has a /dev/serial0")
    c = only(check_serial_ports(context(tmp_path, modbus("/dev/serial0"))))
    assert c.summary == "/dev/serial0 (appliance washer) does not exist"
    assert c.fix.startswith("the Pi's UART is off: sudo raspi-config nonint do_serial_hw 0")
