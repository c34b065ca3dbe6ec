"""`koto profile check` and `koto profile suggest`: see what a profile makes of an appliance's recent power, and
get band and dwell changes that fit it to the machine, without a programmer.

The readings come from the daemon's power trace in the runtime folder (`power-APPLIANCE.csv`, the last 6 h, kept
on tmpfs: see gateway/power_log.py), refreshed on request, or from a recorded trace (`--trace FILE`, same format).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from metering.errors import ProfileError
from metering.profile import BUILTIN_NAMES, Profile, builtin_profile, load_profile

from .cli_common import config_option, parse_since
from .cli_common import resolve as resolve_config
from .errors import ConfigError, UnknownName
from .power_log import REQUEST_FILE, TracePoint, read_trace, trace_name
from .profile_plot import render_svg, render_terminal
from .profile_replay import GAP, Timeline, replay
from .profile_suggest import apply, power_stats, profile_toml, suggest
from .status import read_status
from .status import runtime_dir as default_runtime_dir

REFRESH_WAIT_S = 6.0


@click.group()
def profile() -> None:
    """Check an appliance's profile against its recent power, and get suggestions to tune it."""


def _common(f: Any) -> Any:
    for opt in reversed([
        config_option,
        click.argument("appliance"),
        click.option("--since", default=None, help="From this local time (ISO time, YYYY-MM-DD, 'today', Nd)."),
        click.option("--trace", "trace_file", type=click.Path(dir_okay=False), default=None,
                     help="Read this recorded trace (t,power_w[,signal,value] CSV) instead of the daemon's."),
        click.option("--profile", "profile_ref", default=None,
                     help="Use this profile (a built-in name or a TOML file) instead of the appliance's."),
        click.option("--runtime-dir", type=click.Path(file_okay=False), default=None,
                     help="Where the daemon writes its traces. Default: $RUNTIME_DIRECTORY or /run/koto."),
    ]):
        f = opt(f)
    return f


def _load(appliance: str, config_path: str | None, since: str | None, trace_file: str | None,
          profile_ref: str | None, runtime_dir: str | None) -> tuple[Timeline, Any, str]:
    cfg = None
    if config_path is not None or profile_ref is None:
        try:
            cfg, _, _ = resolve_config(config_path, None, need_config=profile_ref is None)
        except click.UsageError:
            if profile_ref is None:
                raise click.UsageError("no config to find the appliance's profile: pass --config FILE or "
                                       f"--profile NAME|FILE (built-ins: {', '.join(BUILTIN_NAMES)})") from None
    tz = cfg.tz if cfg is not None else ZoneInfo("UTC")
    prof = _profile(appliance, cfg, profile_ref)
    if trace_file:
        points, where = read_trace(Path(trace_file)), trace_file
    else:
        points, where = _daemon_trace(appliance, Path(runtime_dir) if runtime_dir else default_runtime_dir())
    tl = replay(points, prof, appliance=appliance, since=parse_since(since, tz))
    if not tl.points:
        raise click.ClickException(f"{where}: no power readings{' since ' + since if since else ''}")
    return tl, tz, where


def _profile(appliance: str, cfg: Any, ref: str | None) -> Profile:
    if ref is not None:
        if ref.endswith(".toml") or "/" in ref:
            return load_profile(ref)
        return builtin_profile(ref)
    apps = {a.id: a for a in cfg.appliances}
    if appliance not in apps:
        raise UnknownName("appliance", appliance, sorted(apps))
    name = apps[appliance].profile
    try:
        return load_profile(name) if name.endswith(".toml") else builtin_profile(name)
    except ProfileError as e:
        raise ConfigError(cfg.file, f"appliance.{appliance}.profile", str(e)) from e


def _daemon_trace(appliance: str, folder: Path) -> tuple[list[TracePoint], str]:
    """The daemon's trace of `appliance`, refreshed first when the daemon runs and the runtime folder lets us ask."""
    path = folder / trace_name(appliance)
    before = path.stat().st_mtime if path.exists() else 0.0
    running = not read_status(folder).not_running
    try:
        if running:
            (folder / REQUEST_FILE).touch()
    except OSError:
        pass  # not allowed to ask (e.g. not root): read what the daemon last wrote
    else:
        deadline = time.monotonic() + REFRESH_WAIT_S
        while running and time.monotonic() < deadline and (not path.exists() or path.stat().st_mtime == before):
            time.sleep(0.3)
    if not path.exists():
        raise click.ClickException(f"{path}: no power trace (is the daemon running, with {appliance!r} "
                                   "configured? or pass --trace FILE)")
    age = time.time() - path.stat().st_mtime
    if not running:
        click.echo(f"note: the daemon is not running; reading the trace it last wrote ({age / 60:.0f} min ago)",
                   err=True)
    elif age > 300:
        click.echo(f"note: {path} was written {age / 60:.0f} min ago; the daemon writes it every 2 min while it "
                   "runs", err=True)
    return read_trace(path), str(path)


def _summary(tl: Timeline, tz: Any) -> list[str]:
    secs = tl.seconds_by_function()
    energy = tl.energy_by_function()
    stats = power_stats(tl)
    total_s = sum(secs.values()) or 1.0
    total_e = sum(energy.values()) or 1
    lines = [f"{'function':12} {'time':>9} {'share':>6} {'energy':>10} {'share':>6}   power p5 / p50 / p95"]
    for f in [*tl.profile.function_names(), GAP]:
        if f not in secs:
            continue
        _, p5, p50, p95 = stats.get(f, (0, 0, 0, 0))
        lines.append(f"{f:12} {secs[f] / 60:7.1f} m {100 * secs[f] / total_s:5.1f}% {energy.get(f, 0) / 1e6:7.3f} kWh "
                     f"{100 * energy.get(f, 0) / total_e:5.1f}%   {p5 / 1000:.1f} / {p50 / 1000:.1f} / "
                     f"{p95 / 1000:.1f} W")
    lines.append(f"uses: {len(tl.uses)}" + "".join(
        f"\n  {datetime.fromtimestamp(u.start, tz):%H:%M:%S} - {datetime.fromtimestamp(u.end, tz):%H:%M:%S}  "
        f"{u.energy_mwh / 1e6:.3f} kWh" for u in tl.uses[:20]) + ("\n  ..." if len(tl.uses) > 20 else ""))
    return lines


@profile.command()
@_common
@click.option("--svg", "svg_file", type=click.Path(dir_okay=False), default=None, help="Also draw it as SVG here.")
@click.option("--width", type=int, default=100, show_default=True, help="Columns of the terminal plot.")
def check(appliance: str, config_path: str | None, since: str | None, trace_file: str | None,
          profile_ref: str | None, runtime_dir: str | None, svg_file: str | None, width: int) -> None:
    """Show APPLIANCE's power over the period with the functions its profile detects and the uses it counts."""
    tl, tz, where = _load(appliance, config_path, since, trace_file, profile_ref, runtime_dir)
    click.echo(f"{appliance}: profile {tl.profile.name} ({tl.profile.file}), {len(tl.points)} readings from {where}, "
               f"{datetime.fromtimestamp(tl.start, tz):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(tl.end, tz):%H:%M}")
    for line in render_terminal(tl, tz, width=width):
        click.echo(line)
    click.echo("")
    for line in _summary(tl, tz):
        click.echo(line)
    if svg_file:
        Path(svg_file).write_text(render_svg(tl, tz), encoding="utf-8")
        click.echo(f"SVG written to {svg_file}")


@profile.command(name="suggest")
@_common
@click.option("--name", default=None, help="Name for the suggested profile (default: the current one's).")
def suggest_cmd(appliance: str, config_path: str | None, since: str | None, trace_file: str | None,
                profile_ref: str | None, runtime_dir: str | None, name: str | None) -> None:
    """Propose band and dwell changes that fit APPLIANCE's profile to the period, as TOML for a custom profile."""
    tl, _, where = _load(appliance, config_path, since, trace_file, profile_ref, runtime_dir)
    changes = suggest(tl)
    click.echo(f"# {appliance}: profile {tl.profile.name}, {len(tl.points)} readings from {where}")
    if not changes:
        click.echo(f"# nothing to change: no band, dwell or use change did better over this period "
                   f"({len(tl.uses)} use(s)); look at `koto profile check` for what the profile detects.")
        return
    try:
        new = apply(tl.profile, changes)
    except ProfileError as e:
        raise click.ClickException(f"the suggested changes do not make a valid profile ({e}); tune by hand with "
                                   "`koto profile check`") from e
    after = replay(tl.points, new, appliance=appliance, signals=tl.signals)
    b, a = tl.seconds_by_function(), after.seconds_by_function()
    total = sum(b.values()) or 1.0
    click.echo(f"# with these changes over the same period: {tl.profile.unmatched} "
               f"{100 * a.get(tl.profile.unmatched, 0) / total:.1f} % of the time "
               f"(now {100 * b.get(tl.profile.unmatched, 0) / total:.1f} %), uses {len(after.uses)} "
               f"(now {len(tl.uses)}), function changes {len(after.spans)} (now {len(tl.spans)}).")
    click.echo("# Save as a .toml file, set `profile = \"/path/to/it.toml\"` for the appliance, restart koto, and "
               "check again.")
    click.echo(profile_toml(tl.profile, changes, name=name), nl=False)
