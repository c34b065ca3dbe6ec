"""A serial port that was unplugged is opened again as soon as its path is back, not when the backoff next allows.

Both serial drivers reopen a port that went away with capped, jittered backoff (0.5 s doubling up to 30 s), so a
port that is missing for good (an adapter left unplugged, a wrong path) costs one failed open per half minute, not
one a second. But the common case is an installer pulling a USB adapter and plugging it back: after a minute out,
the backoff would wait up to another 30 s before the next try, while the meter is there again. The kernel (udev)
makes the device node and its /dev/serial/by-id link appear when the adapter does, so a missing path is watched
instead: one stat of a devtmpfs path at each poll, nothing written, and the next open comes at once.

A path that comes back and still cannot be opened (udev has not yet given it its group, say) backs off again from
the start (0.5 s), as after a first failure. Ports that are not paths (pyserial's `socket://` and `rfc2217://`
URLs) back off as before.
"""

from __future__ import annotations

import asyncio
import errno
import os

from .pi_uart import PI_UART, PL011_UART0, UART0_OFF

# How often a missing port's path is looked at while a line protocol source waits out its backoff.
LOOK_EVERY_S = 0.5


def why_not_open(port: str) -> str:
    """Why the OS refuses to open `port` for reading and writing now, in plain words with what to do ("" when it
    opens, or when the port is not a path). Asked after a failed open, whose library error (pymodbus returns False;
    pyserial's "[Errno 1] Operation not permitted") does not tell an unplugged adapter from a group the service user
    is not in, or from a device that koto.service's device policy leaves out (EPERM inside the unit, whatever the
    node's mode)."""
    if not port.startswith("/"):
        return ""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        if port == PI_UART:  # (udev makes the link only when the UART is on)
            return ("it is not there: the Pi's UART is off (enable_uart=1 in /boot/firmware/config.txt and a reboot; "
                    "docs/install.md)")
        if port == PL011_UART0:
            return f"it is not there: {UART0_OFF}"
        return "it is not there (the adapter unplugged, or a wrong path: ls -l /dev/serial/by-id/)"
    except PermissionError as e:
        if e.errno == errno.EPERM:
            return ("the system does not let the service open this device (Operation not permitted): koto.service's "
                    "DeviceAllow= does not list it; sudo koto doctor names the drop-in that does")
        return ("permission denied: the service user may not read and write it (not in the port's group, "
                "dialout?); sudo koto doctor says which")
    except OSError as e:
        if e.errno == errno.EBUSY:
            return "it is busy: another program holds it"
        return f"cannot open it: {e.strerror or e}"
    os.close(fd)
    return ""


def missing(port: str) -> bool:
    """True when `port` is a file system path and nothing is there now (a symlink to nothing counts as missing)."""
    return port.startswith("/") and not os.path.exists(port)


async def backoff_or_back(port: str, delay_s: float, *, was_missing: bool) -> bool:
    """Wait `delay_s`, or less: when the port's path was missing at the failed open, return as soon as it is there
    again. True when it came back early (the caller restarts its backoff from the start)."""
    if not was_missing:
        await asyncio.sleep(delay_s)
        return False
    loop = asyncio.get_running_loop()
    end = loop.time() + delay_s
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(LOOK_EVERY_S, left))
        if not missing(port):
            return True
    return False
