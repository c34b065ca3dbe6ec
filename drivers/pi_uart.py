"""The Raspberry Pi's own UART on GPIO 14 (TXD) and 15 (RXD), as a serial port for a meter.

`/dev/serial0` is udev's name for it up to the Pi 4 (the mini UART `ttyS0` on a Pi 3, 4 or Zero W with Bluetooth on,
the PL011 `ttyAMA0` otherwise; on a Pi 5 it is the debug connector's UART, and GPIO 14/15's is `ttyAMA0` with
`dtparam=uart0=on`, which is not recognised here: its pins are not claimed). A source reading it uses those two
pins: they are claimed, shared by every source on the port, so that an S0 meter, a contact or a relay wired to GPIO
14 or 15 is refused at config load instead of taking the pins from the UART (gpiozero would make them plain inputs
or outputs, and the meter go quiet).
"""

from __future__ import annotations

import os

from .base import Claim

PI_UART = "/dev/serial0"
PI_UART_PINS = {14: "TXD", 15: "RXD"}


def is_pi_uart(port: str, pi_uart: str = PI_UART) -> bool:
    """Whether `port` names the Pi's GPIO UART: `/dev/serial0` itself, or the device it points to."""
    if port == pi_uart:
        return True
    return os.path.exists(pi_uart) and os.path.realpath(port) == os.path.realpath(pi_uart)


def pin_claims(port: str, key: str, pi_uart: str = PI_UART) -> tuple[Claim, ...]:
    """GPIO 14 and 15, claimed for a source on the Pi's UART (none for any other port)."""
    if not is_pi_uart(port, pi_uart):
        return ()
    return tuple(Claim(f"gpio:{pin}", key, terms="the Pi's UART", exclusive=False,
                       label=f"{pin} ({name} of the Pi's UART, {port})") for pin, name in PI_UART_PINS.items())
