"""`koto doctor`: every check says what it checked, ok / warn / fail, and in one line what to do.

A check is a function of a `Context` (the config as read, the state folder, the service user, the runtime folder)
returning one `Check` or several. Checks are grouped by concern in `doctor_checks_*.py`; this module runs them in
order, so the output reads top-down like an installer's checklist: config, state folder, user and groups, hardware,
clock, cloud, ledger. A check that itself crashes is a `fail` naming the error (never a traceback): doctor is what
support runs when things are broken, so it must not break with them.

Why a service user option: the daemon runs as `koto` (systemd/koto.service), and what matters is what *that* user
can do, whoever runs doctor (root, an operator in the `koto` group). Permissions are computed from the files' owner,
group and mode for that user's groups, not tried with `os.access` (which would answer for root).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import GatewayConfig
from .config_check import CheckReport, check_config

log = logging.getLogger("koto.doctor")

Status = Literal["ok", "warn", "fail", "skip"]
DEFAULT_USER = "koto"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: what was checked, the verdict, and (unless ok) one line of what to do."""

    name: str
    status: Status
    summary: str
    fix: str = ""
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "summary": self.summary, "fix": self.fix,
                "details": list(self.details)}


@dataclass
class Context:
    """What the checks look at. Built once by `make_context`; tests build one directly."""

    config_path: Path
    report: CheckReport
    state_dir: Path | None
    user: str = DEFAULT_USER
    runtime_dir: Path = Path("/run/koto")
    timeout_s: float = 5.0
    now_wall: float = field(default_factory=time.time)
    unit_files: tuple[Path, ...] = (Path("/etc/systemd/system/koto.service"),
                                    Path("/usr/lib/systemd/system/koto.service"),
                                    Path("/lib/systemd/system/koto.service"))
    drop_in_dirs: tuple[Path, ...] | None = None  # where the unit's drop-ins are looked for (None: systemd's folders)
    cmdline: Path = Path("/proc/cmdline")  # the kernel command line, for its serial console
    proc_devices: Path = Path("/proc/devices")  # the device groups that a unit's char-GROUP names
    dev: Path = Path("/dev")
    sys_tty: Path = Path("/sys/class/tty")  # a tty's device-tree node, to tell a Pi's UARTs apart
    device_tree: Path = Path("/proc/device-tree")

    @property
    def cfg(self) -> GatewayConfig | None:
        return self.report.config


def make_context(config_path: str | Path, *, state_dir: str | Path | None = None, user: str = DEFAULT_USER,
                 runtime_dir: Path | None = None, timeout_s: float = 5.0) -> Context:
    from .status import runtime_dir as default_runtime_dir

    report = check_config(config_path)
    sd = Path(state_dir) if state_dir else (report.config.state_dir if report.config else None)
    return Context(Path(config_path), report, sd, user=user, runtime_dir=runtime_dir or default_runtime_dir(),
                   timeout_s=timeout_s)


CheckFn = Callable[[Context], "Check | list[Check]"]


def all_checks() -> list[tuple[str, CheckFn]]:
    from . import doctor_checks_cloud as cloud
    from . import doctor_checks_hardware as hw
    from . import doctor_checks_ledger as ledger
    from . import doctor_checks_system as system

    return [
        ("config", system.check_config_file),
        ("service user", system.check_user_groups),
        ("state folder", system.check_state_folder),
        ("GPIO", hw.check_gpio),
        ("serial ports", hw.check_serial_ports),
        ("SPI", hw.check_spi),
        ("BLE", hw.check_ble),
        ("clock", system.check_clock),
        ("broker", cloud.check_broker),
        ("certificates", cloud.check_certificates),
        ("disk", system.check_disk),
        ("ledger", ledger.check_ledger),
        ("backlog", ledger.check_backlog),
    ]


def run_doctor(ctx: Context, checks: Iterable[tuple[str, CheckFn]] | None = None) -> list[Check]:
    out: list[Check] = []
    for name, fn in checks if checks is not None else all_checks():
        try:
            got = fn(ctx)
        except Exception as e:  # a check that crashes is reported, the others still run
            log.debug("check %s crashed", name, exc_info=True)
            got = Check(name, "fail", f"the check itself failed: {type(e).__name__}: {e}",
                        "run `koto -vv doctor` and send the output (and `koto support-bundle`) to support")
        out.extend(got if isinstance(got, list) else [got])
    return out


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "-   "}


def render(checks: list[Check]) -> list[str]:
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{_MARK[c.status]}  {c.name:<{width}}  {c.summary}")
        pad = " " * (width + 8)
        lines.extend(f"{pad}{d}" for d in c.details)
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"{pad}-> {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append("")
    lines.append(f"{fails} failed, {warns} warning(s), {sum(c.status == 'ok' for c in checks)} ok")
    return lines
