"""Why a serial port does not open, in the words the journal gets: an unplugged adapter, a group the service user
is not in, and a device koto.service's device policy leaves out are three different fixes, and pymodbus' failed
connect (False) or pyserial's "[Errno 1] Operation not permitted" tell none of them."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from drivers.port_watch import why_not_open
from tests.drivers.test_modbus_bus import SLOW_BACKOFF_BUS, meter
from tests.support.as_user import AS_ROOT
from tests.support.paths import REPO


def test_a_port_that_opens_has_nothing_to_say() -> None:
    master, slave = os.openpty()
    try:
        assert why_not_open(os.ttyname(slave)) == ""
    finally:
        os.close(master)
        os.close(slave)
    assert why_not_open("socket://127.0.0.1:1") == ""  # not a path: pyserial's own error says it


def test_a_missing_port_is_an_adapter_unplugged_or_a_wrong_path(tmp_path: Path) -> None:
    assert why_not_open(str(tmp_path / "ttyUSB0")) == ("it is not there (the adapter unplugged, or a wrong path: "
                                                       "ls -l /dev/serial/by-id/)")


@pytest.mark.skipif(not AS_ROOT, reason="drops to the user nobody")
def test_a_port_the_user_may_not_open_is_a_group_to_join() -> None:
    """A root-owned 0600 pty, opened by `nobody` (a child that drops to it after importing)."""
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        os.chmod(tty, 0o600)
        child = ("import os, sys\nfrom drivers.port_watch import why_not_open\n"
                 "os.setgroups([]); os.setgid(65534); os.setuid(65534)\nprint(why_not_open(sys.argv[1]))\n")
        out = subprocess.run([sys.executable, "-c", child, tty], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout.strip()
    finally:
        os.close(master)
        os.close(slave)
    assert out == ("permission denied: the service user may not read and write it (not in the port's group, "
                   "dialout?); sudo koto doctor says which")


def test_a_device_the_unit_leaves_out_is_a_drop_in_to_add(mocker: pytest.MockFixture) -> None:
    """Inside koto.service the kernel's device cgroup refuses a node its DeviceAllow= does not list with EPERM. No
    device cgroup here (no systemd): the kernel's answer is faked at the open."""
    mocker.patch("drivers.port_watch.os.open", side_effect=PermissionError(errno.EPERM, "Operation not permitted"))
    assert why_not_open("/dev/ttyS0") == ("the system does not let the service open this device (Operation not "
                                          "permitted): koto.service's DeviceAllow= does not list it; sudo koto "
                                          "doctor names the drop-in that does")


async def test_the_bus_says_why_its_port_did_not_open() -> None:
    async with ModbusSimulator([SimMeter("sdm120", 1)]) as sim, meter(sim, 1, "sdm120", bus=SLOW_BACKOFF_BUS) as src:
        assert await src.poll_once()
        sim.wire.unplug()
        assert await src.poll_once() == []
        assert src.bus is not None
        assert src.bus.last_open_error.startswith("it is not there (the adapter unplugged")


def test_the_pis_uart_missing_is_the_uart_switched_off_not_an_adapter_unplugged() -> None:
    """udev makes /dev/serial0 only while the UART is on; this machine has no such link (no Pi here to switch it
    off), so the answer for a missing /dev/serial0 is asked of the real call on the real path."""
    if os.path.exists("/dev/serial0"):
        pytest.skip("this machine has a /dev/serial0")
    assert why_not_open("/dev/serial0") == ("it is not there: the Pi's UART is off (enable_uart=1 in "
                                            "/boot/firmware/config.txt and a reboot; docs/install.md)")


def test_a_missing_ttyama0_is_a_pi_5s_uart_switched_off_or_a_pi_4s_bluetooth() -> None:
    if os.path.exists("/dev/ttyAMA0"):
        pytest.skip("this machine has a /dev/ttyAMA0")
    assert why_not_open("/dev/ttyAMA0") == (
        "it is not there: a Pi 5's UART on GPIO 14/15 is off (dtparam=uart0=on in /boot/firmware/config.txt: sudo "
        "raspi-config nonint do_serial_hw 0, and a reboot); on a Pi 3 or 4 ttyAMA0 is the Bluetooth chip's: name "
        "/dev/serial0")
