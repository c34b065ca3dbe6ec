"""`koto learn APPLIANCE --function NAME`: record a function while the person runs it, show the rule learned from
it, and save it into the appliance's own profile (gateway/learn.py does the learning; this is the terminal around it).

While the daemon runs, the recording is the daemon's own: `koto learn` marks the start, follows the appliance's
power in the status file (`status.json`, every few seconds) to say what it sees and to notice when the appliance is
back at rest, and at the end asks the daemon for its power trace (the RAM ring, written to the runtime folder on
request: gateway/power_log.py) and takes the readings between the marks. The minute before the start says where the
appliance rests; the rest of the trace (up to 6 h) is the history the other functions are checked against.
Without a daemon, `--trace FILE` learns from a recording of your own (the trace format of `koto profile check`).
"""

from __future__ import annotations

import select
import sys
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import config_option
from .cli_common import resolve as resolve_config
from .daemon import load_appliance_profile
from .errors import UnknownName
from .learn import IDLE_S, Learned, LearnSession, cut_recording, derive_rule, learned_toml, save_learned
from .power_log import TracePoint, read_trace
from .profile_plot import render_terminal
from .status import read_status
from .status import runtime_dir as default_runtime_dir

POLL_S = 0.5


@click.command()
@config_option
@click.argument("appliance")
@click.option("--function", "function", required=True, help="The function to learn (new, or one to relearn).")
@click.option("--trace", "trace_file", type=click.Path(dir_okay=False), default=None,
              help="Learn from this recording (t,power_w CSV) instead of recording from the running daemon.")
@click.option("--idle-s", type=click.FloatRange(1, 3600), default=IDLE_S, show_default=True,
              help="Stop once the appliance has been back at rest this long after running.")
@click.option("--max-minutes", type=click.FloatRange(0.1, 600), default=240.0, show_default=True,
              help="Stop after this long whatever happens.")
@click.option("--yes", is_flag=True, help="Save without asking.")
@click.option("--dry-run", is_flag=True, help="Show the rule and the profile it makes; save nothing.")
@click.option("--width", type=int, default=100, show_default=True, help="Columns of the chart.")
@click.option("--runtime-dir", type=click.Path(file_okay=False), default=None,
              help="Where the daemon writes its status and traces. Default: $RUNTIME_DIRECTORY or /run/koto.")
def learn(config_path: str | None, appliance: str, function: str, trace_file: str | None, idle_s: float,
          max_minutes: float, yes: bool, dry_run: bool, width: int, runtime_dir: str | None) -> None:
    """Record FUNCTION of APPLIANCE while you run it, derive its band and dwell rule, and save it to the profile.

    Start it, then start the function on the appliance; it stops by itself once the appliance is back at rest
    (or press Enter). The rule is checked by replaying the recording and the appliance's recent history; the
    gateway uses it from its next start."""
    cfg, _, _ = resolve_config(config_path, None, need_config=True)
    assert cfg is not None and cfg.file
    apps = {a.id: a for a in cfg.appliances}
    if appliance not in apps:
        raise UnknownName("appliance", appliance, sorted(apps))
    profile = load_appliance_profile(apps[appliance], cfg.file)
    if trace_file:
        samples, rest, history = read_trace(Path(trace_file)), None, list[TracePoint]()
    else:
        folder = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        samples, rest, history = _record(appliance, function, folder, idle_s=idle_s, max_s=max_minutes * 60)
    learned = derive_rule(profile, function, samples, appliance=appliance, rest_mw=rest, history=history)
    _show(learned, cfg.tz, width)
    if dry_run:
        click.echo("")
        click.echo(learned_toml(learned, name=learned.profile.name), nl=False)
        click.echo("dry run: nothing saved", err=True)
        return
    if not yes:
        if not sys.stdin.isatty():
            click.echo("not saved: pass --yes to save without a terminal (or --dry-run to see the profile)", err=True)
            raise SystemExit(1)
        if not click.confirm(f"Save {function!r} into {appliance}'s profile?", default=True):
            click.echo("not saved")
            return
    saved = save_learned(learned, config_path=Path(cfg.file), appliance=appliance)
    click.echo(f"saved: {saved.profile_path} (profile {saved.profile_name})"
               + (f"; {cfg.state_dir / 'household.toml'} now points {appliance} at it" if saved.config_edited
                  else ""))
    click.echo("The gateway uses it from its next start: sudo systemctl restart koto")


def _show(learned: Learned, tz: Any, width: int) -> None:
    for line in render_terminal(learned.timeline, tz, width=width):
        click.echo(line)
    click.echo("")
    for line in learned.summary():
        click.echo(line)


def _record(appliance: str, function: str, folder: Path, *, idle_s: float,
            max_s: float) -> tuple[list[TracePoint], int | None, list[TracePoint]]:
    """Record from the running daemon: (the readings between the marks, the rest before them, the history)."""
    from .cli_profile import _daemon_trace

    state = read_status(folder)
    if state.not_running or state.data is None:
        raise click.ClickException(f"{state.not_running}; learn mode records from the running gateway (or pass "
                                   "--trace FILE)")
    if appliance not in state.data.get("appliances", {}):
        raise UnknownName("appliance in the running gateway", appliance, sorted(state.data.get("appliances", {})))
    session = LearnSession(appliance, function, idle_s=idle_s)
    tty = sys.stdin.isatty()
    t0 = time.time()
    click.echo(f"Recording {appliance}: start {function!r} on the appliance now. The recording stops by itself "
               f"once {appliance} has been back at rest for {idle_s:g} s" + (" (or press Enter)." if tty else "."))
    seen = 0.0
    why = "time limit reached"
    try:
        while time.time() - t0 < max_s:
            data = read_status(folder).data or {}
            written = float(data.get("written_wall", 0))
            if data.get("state") == "stopped":
                raise click.ClickException("the gateway stopped during the recording; nothing learned")
            if written > seen:
                seen = written
                power = int(data.get("appliances", {}).get(appliance, {}).get("power_mw", 0))
                state_now = session.feed(TracePoint(written, power))
                line = f"  {_mmss(time.time() - t0)}  {power / 1000:8.1f} W  {state_now}"
                click.echo(f"\r{line}" if tty else line, nl=not tty)
                if state_now == "rested":
                    why = f"back at rest for {idle_s:g} s"
                    break
            if tty and select.select([sys.stdin], [], [], POLL_S)[0]:
                sys.stdin.readline()
                why = "stopped by Enter"
                break
            if not tty:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        why = "stopped by Ctrl-C"
    t1 = time.time()
    click.echo(("\n" if tty else "") + f"recording ended ({why}) after {_mmss(t1 - t0)}; reading the daemon's trace")
    trace, where = _daemon_trace(appliance, folder)
    written = Path(where).stat().st_mtime
    if written < t1:
        raise click.ClickException(f"{where} was written {t1 - written:.0f} s before the recording ended: the daemon "
                                   "could not be asked for a fresh one (that needs write access to its runtime "
                                   "folder); run koto learn with sudo")
    rec = cut_recording(trace, t0, t1)
    if not rec.samples:
        raise click.ClickException(f"the daemon's trace has no readings of {appliance} between the marks; is its "
                                   "source delivering? (koto status)")
    return list(rec.samples), rec.rest_mw, list(rec.history)


def _mmss(s: float) -> str:
    return f"{int(s) // 60:d}:{int(s) % 60:02d}"

