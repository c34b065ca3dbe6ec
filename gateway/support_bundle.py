"""`koto support-bundle`: one tar.gz a support person can ask for, with nothing secret in it.

What it holds (docs/support.md): `config/koto.toml` redacted (`gateway.redact`), `doctor.json`, `status.json`
(the daemon's snapshot, or why there is none), `ledger.json` (size, head, acked, backlog, records per appliance)
and `records/APPLIANCE.json` (its last records, read-only), `logs.jsonl` (`journalctl -u koto -o json` for the
last hours when journalctl exists; else `logs.txt` saying none were found), `system.json` (versions, platform) and
`MANIFEST.txt`. Every member passes through `Secrets.scrub` before it is written, so a secret that reached a log
line or a doctor message is replaced too.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .redact import Secrets, redact_toml_text

if TYPE_CHECKING:
    from metering.ledger.lease import ReaderLease

LAST_RECORDS = 20
LOG_HOURS = 48


@dataclass
class Bundle:
    """Members collected in memory (name -> text) before they are scrubbed and written."""

    secrets: Secrets
    members: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, text: str) -> None:
        self.members[name] = text

    def add_json(self, name: str, data: Any) -> None:
        self.add(name, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def write(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        root = out.name.removesuffix(".tar.gz")
        now = time.time()
        with tarfile.open(tmp, "w:gz") as tar:
            for name, text in sorted(self.members.items()):
                data = self.secrets.scrub(text).encode()
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        tmp.chmod(0o600)
        tmp.replace(out)


Progress = Callable[[str], None]


def make_bundle(config_path: Path, out: Path | None, *, state_dir: Path | None = None,
                runtime_dir: Path | None = None, user: str = "koto", timeout_s: float = 3.0,
                progress: Progress = lambda _s: None) -> Path:
    from .config import read_toml
    from .doctor import make_context, run_doctor
    from .errors import ConfigError

    progress("reading the config")
    try:
        data = read_toml(config_path)
        text = config_path.read_text(encoding="utf-8")
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        data, text = {}, f"# cannot read {config_path}: {e}\n"
    ctx = make_context(config_path, state_dir=state_dir, user=user, runtime_dir=runtime_dir, timeout_s=timeout_s)
    cfg = ctx.cfg
    key_files = [p for p in ((cfg.cloud.key,) if cfg and cfg.cloud and cfg.cloud.key else ())]
    bundle = Bundle(Secrets.from_config(data, key_files))
    bundle.add("config/koto.toml", redact_toml_text(text))
    from .config_household import read_household_text  # what pairing and learn mode added

    with contextlib.suppress(ConfigError):
        hh_text = read_household_text(ctx.state_dir) if ctx.state_dir is not None else None
        bundle.add("config/household.toml", redact_toml_text(hh_text) if hh_text is not None else
                   "# no household.toml (or not readable by this user): nothing added by pairing or learn mode\n")
    gid = cfg.id if cfg else "unknown"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = out or Path.cwd() / f"koto-support-{gid}-{stamp}.tar.gz"

    progress("running the doctor")
    checks = run_doctor(ctx)
    bundle.add_json("doctor.json", {"ok": not any(c.status == "fail" for c in checks),
                                    "checks": [c.to_dict() for c in checks]})
    progress("reading the status")
    _section(bundle, "status.json", lambda: _status(bundle, ctx))
    progress("reading the ledger")
    _section(bundle, "ledger.json", lambda: _ledger(bundle, ctx))
    progress("collecting the logs")
    _section(bundle, "logs.txt", lambda: _logs(bundle))
    from koto import __version__

    bundle.add_json("system.json", {"koto": __version__, "python": sys.version, "platform": platform.platform(),
                                    "machine": platform.machine(), "made": datetime.now(UTC).isoformat(),
                                    "config": str(config_path), "state_dir": str(ctx.state_dir)})
    bundle.add("MANIFEST.txt", _manifest(bundle))
    progress(f"writing {out}")
    bundle.write(out)
    return out


def _section(bundle: Bundle, member: str, fn: Callable[[], None]) -> None:
    """Run one part of the bundle; a part that fails becomes a note in its member, never a bundle not made."""
    try:
        fn()
    except Exception as e:
        bundle.add(member, f"could not be collected: {type(e).__name__}: {e}\n")
        bundle.notes.append(f"{member}: {type(e).__name__}: {e}")


def _status(bundle: Bundle, ctx: Any) -> None:
    from .status import read_status

    found = read_status(ctx.runtime_dir)
    bundle.add_json("status.json", {"running": not found.not_running, "problem": found.not_running or None,
                                    "status": found.data})


def _ledger(bundle: Bundle, ctx: Any) -> None:
    from metering.ledger.lease import reader_lease

    from .doctor_checks_ledger import _open, ledger_stats

    ledger, why = _open(ctx)
    if ledger is None:
        bundle.add_json("ledger.json", {"error": why})
        bundle.notes.append(f"no ledger statistics: {why}")
        return
    with ledger:
        stats = ledger_stats(ledger, time.time())
        # A connection of our own, read while `ledger` is open: the daemon holds its ledger exclusively and lends it
        # while a reader holds a lease (`ledger` has one; this one is ours, let go once our connection is closed),
        # so it is one lend, not two.
        with reader_lease(ledger.path) as lease:
            _records(bundle, ledger.path, stats, lease)
    if ctx.cfg is not None and ctx.cfg.cloud is None:  # local only: nothing is ever sent, so nothing is behind
        stats["backlog"] = None
        stats["sync"] = "none: no [cloud] in the config, the ledger is kept locally"
    bundle.add_json("ledger.json", stats)


def _records(bundle: Bundle, path: Path, stats: dict[str, Any], lease: ReaderLease) -> None:
    """The last records of each appliance, as stored, read under the caller's lease."""
    from metering.errors import LedgerError
    from metering.ledger.lease import locked_message
    from metering.ledger.store import BUSY_MS, is_busy

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_MS / 1000)
    try:
        try:
            conn.execute("SELECT 1 FROM kv LIMIT 1")  # the first read: where a daemon that does not lend shows
        except sqlite3.Error as e:
            if is_busy(e):
                raise LedgerError(locked_message(path, lease, BUSY_MS / 1000)) from e
            raise
        per = dict(conn.execute("SELECT appliance, COUNT(*) FROM records GROUP BY appliance").fetchall())
        stats["records_per_appliance"] = per
        for appliance in sorted(per):
            rows = conn.execute(
                "SELECT seq, kind, function, t_end_ms, energy_mwh, duration_ms, uses, cost_minor, currency, body "
                "FROM records WHERE appliance=? ORDER BY seq DESC LIMIT ?", (appliance, LAST_RECORDS)).fetchall()
            records = [{"seq": r[0], "kind": r[1], "function": r[2], "t_end": _iso(r[3]), "energy_mwh": r[4],
                        "duration_ms": r[5], "uses": r[6], "cost_minor": r[7], "currency": r[8],
                        "acked": r[0] <= stats["acked_through"], "event": json.loads(r[9])} for r in rows]
            name = appliance if appliance else "_gateway"
            bundle.add_json(f"records/{name}.json", records[::-1])
    finally:
        conn.close()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _logs(bundle: Bundle) -> None:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        bundle.add("logs.txt", "no logs found: journalctl is not installed here (is this a systemd machine?)\n")
        bundle.notes.append("no logs: journalctl not found")
        return
    try:
        done = subprocess.run([journalctl, "-u", "koto", "--since", f"-{LOG_HOURS}h", "-o", "json", "--no-pager"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        bundle.add("logs.txt", f"no logs found: journalctl failed ({e})\n")
        return
    if done.returncode != 0:
        bundle.add("logs.txt", f"no logs found for koto in the last {LOG_HOURS} h "
                               f"(journalctl exit {done.returncode}: {done.stderr.strip()[:300]})\n")
        return
    if not done.stdout.strip():
        bundle.add("logs.txt", f"no log entries of koto in the last {LOG_HOURS} h (has koto run here? journald may "
                               "keep its journal in RAM only, lost at each boot, as Raspberry Pi OS does unless "
                               "deploy/install.sh installed systemd/journald.conf.d/60-koto.conf)\n")
        return
    bundle.add("logs.jsonl", done.stdout)


def _manifest(bundle: Bundle) -> str:
    lines = ["Koto support bundle", "", "files:"]
    lines += [f"  {name}" for name in sorted(bundle.members)]
    lines += ["", f"redacted: secret keys of the config by name, PEM blocks and hex keys by value; "
                  f"{len(bundle.secrets.values)} known secret value(s) scrubbed from every file"]
    lines += [f"note: {n}" for n in bundle.notes]
    return "\n".join(lines) + "\n"
