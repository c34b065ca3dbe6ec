"""The daemon's status file, and `koto status` reading it.

Support staff and the household page need "what is the gateway doing now" without the ledger: the state folder is
the service user's alone (0700), and a second process opening the ledger is one more reader of an SD card. So the
daemon writes a small JSON snapshot, every `EVERY_S` seconds, to `status.json` in its runtime folder — tmpfs
(`/run/koto`, systemd's `RuntimeDirectory=`, passed as `$RUNTIME_DIRECTORY`), never the SD card — mode 0640, so
an operator in the `koto` group can read it. It holds each appliance's function and power, today's energy, uses
and cost, each source's health, the ledger head against the cloud-acked seq, the backlog and the last ack, the
clock, and the entitlements with when they end.

`koto status` reads it and says plainly when the daemon is not running: no file (never started, or /run was
cleared by a reboot), a file whose writer pid is gone, or one not refreshed for STALE_AFTER_S (a hung daemon — the
watchdog restarts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from koto.money import fmt_costs

log = logging.getLogger("koto.status")

STATUS_FILE = "status.json"
DEFAULT_RUNTIME_DIR = "/run/koto"
EVERY_S = 5.0
STALE_AFTER_S = 30.0
VERSION = 1


def runtime_dir() -> Path:
    """Where the daemon keeps its runtime files: systemd's $RUNTIME_DIRECTORY (first entry), else /run/koto."""
    env = os.environ.get("RUNTIME_DIRECTORY", "")
    return Path(env.split(":")[0] if env else DEFAULT_RUNTIME_DIR)


class StatusFile:
    """Writes the snapshot atomically (a temp file renamed over the old one), so a reader never sees half of it.

    A folder that cannot be written is said once, in one line, and the daemon runs on: status is for people,
    metering does not depend on it."""

    def __init__(self, folder: Path, *, every_s: float = EVERY_S) -> None:
        self.path = folder / STATUS_FILE
        self.every_s = every_s
        self._failing = False

    def write(self, data: dict[str, Any]) -> bool:
        tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True, separators=(",", ":"))
            os.chmod(tmp, 0o640)  # whatever the umask: the koto group reads it
            os.replace(tmp, self.path)
        except OSError as e:
            if not self._failing:
                log.warning("cannot write the status file %s (%s); `koto status` will say the daemon is not "
                            "running. Run the service with RuntimeDirectory=koto (see systemd/koto.service)",
                            self.path, e.strerror or e)
            self._failing = True
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        if self._failing:
            log.info("status file %s is written again", self.path)
        self._failing = False
        return True

    async def run(self, build: Callable[[], dict[str, Any]]) -> None:
        """Refresh the file every `every_s` until cancelled; `build` runs in a thread (it reads the ledger)."""
        while True:
            try:
                data = await asyncio.to_thread(build)
            except Exception as e:  # a status that cannot be built must not stop the gateway
                log.warning("cannot build the status snapshot: %s", e)
            else:
                self.write(data)
            await asyncio.sleep(self.every_s)

    def stopped(self, data: dict[str, Any]) -> None:
        """The last word of a clean stop: the same snapshot, marked stopped."""
        self.write({**data, "state": "stopped"})


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Read:
    """What `koto status` found: the snapshot (or None) and, when the daemon is not running, why, in plain words."""

    data: dict[str, Any] | None
    not_running: str = ""


def read_status(folder: Path, *, now_wall: float | None = None) -> Read:
    path = folder / STATUS_FILE
    now = time.time() if now_wall is None else now_wall
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Read(None, f"the gateway daemon is not running ({path} does not exist: it is written while "
                          "koto.service runs). Start it: sudo systemctl start koto")
    except PermissionError:
        return Read(None, f"{path}: permission denied; add yourself to the koto group "
                          "(sudo usermod -aG koto $USER, then log in again) or use sudo")
    except (OSError, ValueError) as e:
        return Read(None, f"{path}: cannot read the status ({e})")
    if not isinstance(data, dict):
        return Read(None, f"{path}: not a status file")
    written = float(data.get("written_wall", 0))
    if data.get("state") == "stopped":
        return Read(data, f"the gateway daemon is not running (it stopped cleanly at {_when(written, None)})")
    if not pid_alive(int(data.get("pid", 0))):
        return Read(data, f"the gateway daemon is not running (pid {data.get('pid')} is gone; last status at "
                          f"{_when(written, None)}). See: journalctl -u koto")
    # Staleness by the file's own age (the host's clock), not by the wall time the daemon wrote into it: a wall
    # clock that was set, or one the daemon was told is something else, must not look like a hung daemon.
    try:
        age = now - path.stat().st_mtime if now_wall is None else now - written
    except OSError:
        age = 0.0
    if age > STALE_AFTER_S:
        return Read(data, f"the gateway daemon is not responding: its status is {age:.0f} s old "
                          "(the watchdog restarts a hung daemon). See: journalctl -u koto")
    return Read(data)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the koto service, read by an operator): alive
        return True
    return True


def _when(wall: float | None, tz: tzinfo | None) -> str:
    if not wall:
        return "never"
    return datetime.fromtimestamp(wall, tz).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def render(data: dict[str, Any], *, now_wall: float | None = None) -> list[str]:
    """One screen for a person: appliances, sources, ledger and cloud, clock, entitlements."""
    now = time.time() if now_wall is None else now_wall
    tz = datetime.now().astimezone().tzinfo
    out = [f"gateway {data.get('gateway')} (koto {data.get('koto')}), "
           f"status of {_when(data.get('written_wall'), tz)}"]
    out.append("")
    out.append(f"{'appliance':<14}{'now':<12}{'power':>10}{'today kWh':>11}{'uses':>6}  cost")
    for aid, a in sorted(data.get("appliances", {}).items()):
        today = a.get("today", {})
        cost = fmt_costs(sorted(today.get("cost_minor", {}).items()), data.get("currency_exponents"))
        out.append(f"{aid:<14}{a.get('function') or 'idle':<12}{a.get('power_mw', 0) / 1000:>8.1f} W"
                   f"{today.get('energy_mwh', 0) / 1e6:>11.3f}{today.get('uses', 0):>6}  {cost}")
    out.append("")
    out.append(f"{'source':<22}{'state':<13}{'last reading':<15}{'errors':>7}{'reconnects':>11}")
    for name, s in sorted(data.get("sources", {}).items()):
        errors = sum(s.get("errors", {}).values())
        out.append(f"{name:<22}{s.get('state', '?'):<13}{_ago(s.get('age_s')):<15}{errors:>7}"
                   f"{s.get('reconnects', 0):>11}")
    led = data.get("ledger", {})
    out.append("")
    cloud = data.get("cloud")
    last_ack = led.get("last_ack_wall")
    if cloud is None:
        out.append(f"ledger: head seq {led.get('head_seq')}; local only (no [cloud]): nothing is synced")
    else:
        state = "connected" if cloud.get("connected") else "NOT connected"
        out.append(f"ledger: head seq {led.get('head_seq')}, cloud acked through {led.get('acked_through')} "
                   f"(backlog {led.get('backlog')}), last ack {_ago(None if not last_ack else now - last_ack)}")
        out.append(f"cloud: {state} to {cloud.get('broker')}"
                   + (f"; last error: {cloud['last_error']}" if cloud.get("last_error") else ""))
    clock = data.get("clock", {})
    out.append("clock: " + ("synchronised" if clock.get("synced") else
                            "NOT synchronised (records carry time status U until it is; check NTP)"))
    ents = data.get("entitlements", [])
    if ents:
        out.append("")
        out.append("entitlements:")
        for e in ents:
            left = "" if e.get("remaining") is None else (
                f", {e['remaining']} uses left" if e["kind"] == "uses" else f", {e['remaining'] / 1e6:.3f} kWh left")
            until = f", until {_when(e['valid_until'], tz)}" if e.get("valid_until") else ", open-ended"
            out.append(f"  {e['appliance']}/{e['function']}: {e['kind']}{left}{until} ({e['id']})")
    return out
