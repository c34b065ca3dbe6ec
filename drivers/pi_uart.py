"""The Raspberry Pi's own UART on GPIO 14 (TXD) and 15 (RXD), as a serial port for a meter.

Its names: `/dev/serial0`, udev's link to whichever UART is on those pins (the mini UART `ttyS0` on a Pi 3, 4 or
Zero W with Bluetooth on, the PL011 `ttyAMA0` otherwise; on a Pi 5 the link follows the firmware's console alias,
which is the debug connector's UART until `dtparam=uart0_console` moves it to GPIO 14/15, as `koto firstboot`
does), and the UARTs by their own names, `/dev/ttyS0` and `/dev/ttyAMA0` (a Pi 5's GPIO 14/15 UART with
`dtparam=uart0=on`, raspi-config's way). A source reading one of them uses those two pins: they are claimed, shared
by every source on the port, so that an S0 meter, a contact or a relay wired to GPIO 14 or 15 is refused at config
load instead of taking the pins from the UART (gpiozero would make them plain inputs or outputs, and the meter go
quiet). On a Pi 3 or 4 with Bluetooth on, ttyAMA0 is the Bluetooth chip's, not on the pins: where the kernel's own
Bluetooth driver binds it (serdev) there is no /dev/ttyAMA0 at all, and the missing port's fix says so; where it
is a tty (hciattach), `uart_role` reads it from the device tree and `koto doctor` fails it. The claim then only
keeps GPIO 14/15 free in a config that is wrong anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Claim

PI_UART = "/dev/serial0"
MINI_UART = "/dev/ttyS0"
PL011_UART0 = "/dev/ttyAMA0"
PI_UART_PINS = {14: "TXD", 15: "RXD"}
# Why /dev/ttyAMA0 is missing, and what to do.
UART0_OFF = ("a Pi 5's UART on GPIO 14/15 is off (dtparam=uart0=on in /boot/firmware/config.txt: sudo raspi-config "
             "nonint do_serial_hw 0, and a reboot); on a Pi 3 or 4 ttyAMA0 is the Bluetooth chip's: name /dev/serial0")


def is_pi_uart(port: str, pi_uart: str = PI_UART) -> bool:
    """Whether `port` names the Pi's GPIO UART: `/dev/serial0` itself, the device it points to, or one of the UARTs
    that can be on GPIO 14/15 by its own name."""
    if port in (pi_uart, MINI_UART, PL011_UART0):
        return True
    return os.path.exists(pi_uart) and os.path.realpath(port) == os.path.realpath(pi_uart)


def pin_claims(port: str, key: str, pi_uart: str = PI_UART) -> tuple[Claim, ...]:
    """GPIO 14 and 15, claimed for a source on the Pi's UART (none for any other port)."""
    if not is_pi_uart(port, pi_uart):
        return ()
    return tuple(Claim(f"gpio:{pin}", key, terms="the Pi's UART", exclusive=False,
                       label=f"{pin} ({name} of the Pi's UART, {port})") for pin, name in PI_UART_PINS.items())


SYS_TTY = Path("/sys/class/tty")
DEVICE_TREE = Path("/proc/device-tree")


def uart_role(port: str, sys_tty: Path | None = None, device_tree: Path | None = None) -> str | None:
    """`"debug"` when `port` is a Pi 5's debug connector UART (the device tree's `uart10`), `"bluetooth"` when the
    Bluetooth chip hangs off it (ttyAMA0 on a Pi 3 or 4 with Bluetooth on), None otherwise (a UART on the header,
    a USB adapter, a machine without a device tree). The tty's device-tree node is matched against the firmware's
    aliases as Raspberry Pi OS's udev rule for /dev/serial0 matches them (raspberrypi-sys-mods, 99-com.rules)."""
    sys_tty, device_tree = sys_tty or SYS_TTY, device_tree or DEVICE_TREE
    tty = os.path.basename(os.path.realpath(port))
    try:
        node = os.readlink(sys_tty / tty / "device" / "of_node")
    except OSError:
        return None
    if "/base/" not in node:
        return None
    path = "/" + node.split("/base/", 1)[1].strip("/")

    def alias(name: str) -> str | None:
        try:
            return (device_tree / "aliases" / name).read_bytes().rstrip(b"\0").decode("ascii", "replace")
        except OSError:
            return None

    if alias("bluetooth") == f"{path}/bluetooth":
        return "bluetooth"
    if alias("uart10") == path:
        return "debug"
    return None


def not_the_pins(port: str, sys_tty: Path | None = None, device_tree: Path | None = None) -> tuple[str, str] | None:
    """(what, what to do) when a port that opens is still not the UART on GPIO 14/15, in plain words (None when
    nothing says so): a meter wired to those pins and configured on it would never be heard."""
    role = uart_role(port, sys_tty, device_tree)
    real = os.path.basename(os.path.realpath(port))
    if role == "debug":
        return (f"{port} is {real}, the Raspberry Pi 5's debug connector UART, not GPIO 14/15",
                "add the lines [pi5] and dtparam=uart0_console at the end of /boot/firmware/config.txt (koto "
                "firstboot does when it imports the config) and reboot, so that /dev/serial0 is the UART on the pins")
    if role == "bluetooth":
        return (f"{port} is {real}, the Bluetooth chip's UART on this Pi, not GPIO 14/15",
                "name /dev/serial0 in the config: it is the UART on the pins on every model (with enable_uart=1)")
    return None
