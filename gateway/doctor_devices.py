"""What stands between the service and a device node besides its mode: the unit's device policy and the console.

Two things make a port that `ls -l` shows as `crw-rw---- root:dialout` unusable to a `koto` in dialout, and both
are what an installer meets wiring a meter to the Pi's own UART (GPIO 14/15, `/dev/serial0`) instead of a USB
adapter:

- **koto.service's device policy.** The unit runs with `DevicePolicy=closed` and a `DeviceAllow=` list (USB and
  ACM adapters, the PL011 UARTs, GPIO chips, SPI, the mini UART `/dev/ttyS0`): the kernel's device cgroup refuses
  any other node with EPERM, whatever its mode, so the daemon cannot open it while `koto check` and `koto doctor`,
  run from a shell, can. `device_policy` reads the installed unit and its drop-ins as systemd would, and
  `allowed` says whether it lets the service read and write a node.
- **The kernel's serial console.** Raspberry Pi OS boots with `console=serial0,115200` (the firmware passes it on
  as `console=ttyS0` or `ttyAMA0`): once the UART is enabled, the kernel's messages and a login prompt
  (serial-getty) share the meter's wires. `console_on` finds the kernel command line's console on a port.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

DROP_IN_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"), Path("/usr/lib/systemd/system"),
                Path("/lib/systemd/system"))


@dataclass(frozen=True)
class DevicePolicy:
    """`DevicePolicy=` and the `DeviceAllow=` entries (node or `char-GROUP`, and the access letters) in effect."""

    policy: str
    allow: tuple[tuple[str, str], ...]
    unit: Path

    @property
    def restricted(self) -> bool:
        """systemd closes the device cgroup for `closed` and `strict`, and for `auto` once any DeviceAllow= is set."""
        return self.policy in ("closed", "strict") or bool(self.allow)

    def listed(self) -> str:
        return ", ".join(spec for spec, _access in self.allow) or "nothing"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def device_policy(unit_files: tuple[Path, ...], drop_in_dirs: tuple[Path, ...] | None = None) -> DevicePolicy | None:
    """The device policy of the first installed unit of `unit_files` with its drop-ins (`NAME.service.d/*.conf` in
    the unit's folder and in systemd's, `/etc` before `/run` before `/usr/lib` for the same file name, applied in
    file-name order, as systemd does); None when no unit is installed. An empty `DeviceAllow=` clears the list."""
    unit = next((f for f in unit_files if f.is_file()), None)
    if unit is None:
        return None
    dirs = [unit.parent, *(drop_in_dirs if drop_in_dirs is not None else DROP_IN_DIRS)]
    confs: dict[str, Path] = {}
    for d in dirs:
        folder = d / f"{unit.name}.d"
        try:
            names = sorted(p.name for p in folder.glob("*.conf"))
        except OSError:
            continue
        for n in names:
            confs.setdefault(n, folder / n)
    policy, allow = "auto", list[tuple[str, str]]()
    for f in [unit, *(confs[n] for n in sorted(confs))]:
        section = ""
        for raw in _lines(f):
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
                key, value = (s.strip() for s in line.split("=", 1))
                if key == "DevicePolicy":
                    policy = value or "auto"
                elif key == "DeviceAllow":
                    if not value:
                        allow.clear()
                        continue
                    spec, _, access = value.partition(" ")
                    allow.append((spec, access.strip() or "rwm"))
    return DevicePolicy(policy, tuple(allow), unit)


def char_majors(group: str, proc_devices: Path = Path("/proc/devices")) -> set[int]:
    """The majors of the character-device groups in /proc/devices whose name matches `group` (a glob, as systemd
    takes `char-GROUP`)."""
    majors: set[int] = set()
    in_char = False
    for line in _lines(proc_devices):
        if line.endswith(":"):
            in_char = line.startswith("Character")
            continue
        parts = line.split(None, 1)
        if in_char and len(parts) == 2 and parts[0].isdigit() and fnmatch.fnmatchcase(parts[1], group):
            majors.add(int(parts[0]))
    return majors


def allowed(policy: DevicePolicy, rdev: int, *, proc_devices: Path = Path("/proc/devices")) -> bool:
    """Whether the policy lets the service read and write the character device `rdev`."""
    if not policy.restricted:
        return True
    for spec, access in policy.allow:
        if not {"r", "w"} <= set(access):
            continue
        if spec.startswith("/dev/"):
            try:
                st = os.stat(spec)
            except OSError:
                continue  # (systemd skips a node that is not there when the service starts)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
                return True
        elif spec.startswith("char-") and os.major(rdev) in char_majors(spec[5:], proc_devices):
            return True
    return False


def consoles(cmdline: Path = Path("/proc/cmdline")) -> list[str]:
    """The `console=` words of the kernel command line (`console=ttyS0,115200`), in order (none after `--`, which
    is init's)."""
    words = " ".join(_lines(cmdline)).split(" -- ", 1)[0].split()
    return [w for w in words if w.startswith("console=") and len(w) > 8]


def console_on(port: str, cmdline: Path = Path("/proc/cmdline"), dev: Path = Path("/dev")) -> str | None:
    """The `console=` word of the kernel command line that names the same device as `port`, else None."""
    target = os.path.realpath(port)
    for word in consoles(cmdline):
        if os.path.realpath(dev / word[8:].split(",", 1)[0]) == target:
            return word
    return None
