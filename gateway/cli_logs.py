"""`koto logs`: the gateway's journal, filtered the way a support call asks ("the washer, since Tuesday, problems").

It reads journald through `journalctl -o json` (the journal's own reader: rotation, compression, permissions and
`--follow` are its job) and filters by the fields the daemon logs natively (`gateway.journal`): KOTO_APPLIANCE and
KOTO_SOURCE. `--directory`/`--file` read a journal copied off a gateway's card (or a support bundle).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import click

from .cli_common import parse_since

LEVELS = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
NAMES = {2: "CRIT", 3: "ERROR", 4: "WARN", 5: "NOTE", 6: "INFO", 7: "DEBUG"}


def journalctl_args(*, unit: str, since_wall: float | None, level: str | None, follow: bool,
                    directory: str | None, file: str | None, lines: int | None) -> list[str]:
    args = ["journalctl", "--no-pager", "-o", "json", "-u", unit]
    if directory:
        args += ["--directory", directory]
    if file:
        args += ["--file", file]
    if since_wall is not None:
        args += ["--since", f"@{int(since_wall)}"]
    if level:
        args += ["-p", str(LEVELS[level])]
    if lines is not None:
        args += ["-n", str(lines)]
    if follow:
        args.append("--follow")
    return args


def matches(entry: Mapping[str, Any], appliance: str | None) -> bool:
    """An entry is about an appliance when the daemon tagged it with it (or with one of its sources)."""
    if appliance is None:
        return True
    return entry.get("KOTO_APPLIANCE") == appliance


def line(entry: Mapping[str, Any]) -> str:
    """One entry for a person: local time, level, appliance (when tagged) and the message."""
    try:
        when = datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6).strftime("%Y-%m-%d %H:%M:%S")
    except (KeyError, ValueError, OverflowError):
        when = "????-??-?? ??:??:??"
    try:
        level = NAMES.get(int(entry.get("PRIORITY", 6)), "INFO")
    except ValueError:
        level = "INFO"
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journalctl's JSON for a message that is not valid UTF-8: its bytes
        message = bytes(message).decode("utf-8", "replace")
    who = entry.get("KOTO_APPLIANCE") or ""
    return f"{when} {level:<5} {who:<12} {message}".rstrip()


def entries(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # journalctl prints nothing else on stdout; a torn line at --follow's end is skipped
        if isinstance(entry, dict):
            yield entry


class Stopped(BaseException):  # like KeyboardInterrupt: a request to stop, not an error
    """Ctrl-C, SIGTERM or SIGHUP while `koto logs` runs (raised once, in the main thread, by `_stopped_by_signals`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Stop:
    signum: int | None = None  # the first stop signal
    armed = True  # whether it raises `Stopped` (not while the handlers are being put back)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[_Stop]:
    """While `koto logs` runs journalctl, SIGINT, SIGTERM and SIGHUP raise `Stopped` (the first one; later ones only
    wait for the clean-up), so it can end its child first. Python's default for SIGTERM and SIGHUP ends the process
    at once and leaves journalctl running (with --follow, for good); Ctrl-C would say journalctl failed."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.signum is None:
            stop.signum = signum
            if stop.armed:
                raise Stopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        stop.armed = False  # a signal now is only noted: the caller sees `signum` and ends as it asks
        for sig, was in old.items():
            signal.signal(sig, was)


def _end(p: subprocess.Popen[str]) -> None:
    """journalctl ends with us: asked to (SIGTERM), killed if it has not within two seconds, and reaped."""
    try:
        _terminate(p)
    except Stopped:  # the first signal came while waiting for it: later ones are ignored, so this one finishes
        _terminate(p)
    for pipe in (p.stdout, p.stderr):
        if pipe is not None:
            pipe.close()


def _terminate(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@click.command()
@click.option("--appliance", default=None, help="Only what concerns this appliance (and its sources).")
@click.option("--since", default=None, help="From: YYYY-MM-DD, an ISO time, 'today' or Nd (e.g. 2d).")
@click.option("--level", type=click.Choice(list(LEVELS)), default=None,
              help="This level and worse (warning: warnings and errors).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries as they come (Ctrl-C to stop).")
@click.option("-n", "--lines", type=click.IntRange(1), default=None, help="Only the last N entries.")
@click.option("--unit", default="koto.service", show_default=True, help="The systemd unit whose logs to read.")
@click.option("--directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="Read the journal files in this folder (e.g. /var/log/journal copied from a card).")
@click.option("--file", "file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Read this journal file.")
@click.option("--json", "as_json", is_flag=True, help="The journal entries as JSON lines (every field).")
def logs(appliance: str | None, since: str | None, level: str | None, follow: bool, lines: int | None, unit: str,
         directory: str | None, file: str | None, as_json: bool) -> None:
    """The gateway's log from the journal, filtered by appliance, time and level."""
    exe = shutil.which("journalctl")
    if exe is None:
        raise click.ClickException("journalctl not found: Koto logs to the systemd journal on a gateway. Here, run "
                                   "`koto -v run` to see the log on the terminal.")
    args = journalctl_args(unit=unit, since_wall=parse_since(since, None), level=level, follow=follow,
                           directory=directory, file=file, lines=lines)
    args[0] = exe
    shown = 0
    err = ""
    p: subprocess.Popen[str] | None = None
    with _stopped_by_signals() as stop:
        try:
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
            assert p.stdout is not None and p.stderr is not None
            for entry in entries(p.stdout):
                if not matches(entry, appliance):
                    continue
                shown += 1
                click.echo(json.dumps(entry, sort_keys=True) if as_json else line(entry))
                if follow:
                    sys.stdout.flush()
            err = p.stderr.read().strip()
        except Stopped:
            pass
        finally:
            if p is not None:
                _end(p)
    if p is None:  # stopped while journalctl was being started
        raise SystemExit(128 + (stop.signum or signal.SIGINT))
    if stop.signum is None and p.returncode == -signal.SIGINT:
        stop.signum = signal.SIGINT  # a Ctrl-C that reached journalctl (the same foreground job) before us
    if stop.signum is not None:
        raise SystemExit(128 + stop.signum)  # stopped as asked: no "failed", the shell's code for the signal
    if p.returncode not in (0, None, -15):
        raise click.ClickException(f"journalctl failed: {err or f'exit {p.returncode}'}")
    if "insufficient permissions" in err or "No journal files were opened" in err:
        raise click.ClickException("cannot read the journal: add yourself to the systemd-journal (or adm) group "
                                   "(sudo usermod -aG systemd-journal $USER, then log in again), or use sudo")
    if shown == 0 and not follow:
        what = f" for {appliance}" if appliance else ""
        click.echo(f"no log entries{what} (has koto run here? journald may keep its journal in RAM only, lost at "
                   "each boot, as Raspberry Pi OS does unless deploy/install.sh installed "
                   "systemd/journald.conf.d/60-koto.conf: see the README)", err=True)
