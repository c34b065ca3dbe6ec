"""`koto`: the gateway's command line, for installers and support staff.

Every command is a click command; `main(argv) -> int` runs one and returns its exit code, so tests call it directly
and the console script calls it through `sys.exit(main())`. Errors that a person can fix (a config key, a missing
key file) print one plain line and exit 2; `koto verify` exits 1 naming the first bad seq.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from koto import __version__

from .cli_common import DEFAULT_CONFIG, config_option, open_ledger_ro, resolve, state_option
from .entry import guarded
from .logs import setup_logging

# Commands that live in their own modules, imported only when named: `koto run` (the daemon, resident for months)
# then never loads learn, provision, doctor, support-bundle and the rest, about 2 MiB of RSS (bench/daemon_cost.py).
LAZY_COMMANDS = {
    "bthome": ("cli_bthome", "bthome"),
    "check": ("cli_check", "check"), "discover": ("cli_discover", "discover"), "doctor": ("cli_doctor", "doctor"),
    "firstboot": ("cli_firstboot", "firstboot"), "learn": ("cli_learn", "learn"), "logs": ("cli_logs", "logs"),
    "profile": ("cli_profile", "profile"), "provision": ("cli_provision", "provision"),
    "status": ("cli_status", "status"), "support-bundle": ("cli_support", "support_bundle"),
    "usage": ("cli_usage", "usage"),
}


class _LazyGroup(click.Group):
    """A click group whose LAZY_COMMANDS are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module, attr = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(f".{module}", __package__), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="koto")
@click.option("-v", "--verbose", count=True, help="More log detail (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Koto gateway: meter the use of appliance functions into a signed ledger and sync it to the billing cloud."""
    setup_logging(logging.WARNING - 10 * min(verbose, 2))


@cli.command()
@config_option
@state_option
def verify(config_path: str | None, state_dir: str | None) -> None:
    """Walk the ledger's hash chain and signatures offline; exit 1 naming the first bad seq."""
    _cfg, sd, gid = resolve(config_path, state_dir)
    with open_ledger_ro(sd, gid) as ledger, _VerifyProgress() as progress:
        report = ledger.verify(sd.public_key(), progress=progress)
    if report.ok:
        click.echo(f"ok: {report.checked} records verified (seq {report.first_seq}..{report.last_seq}), "
                   f"chain and signatures intact")
        return
    where = f"seq {report.first_bad_seq}" if report.first_bad_seq is not None else "the ledger"
    click.echo(f"FAILED at {where}: {report.reason}", err=True)
    raise SystemExit(1)


class _VerifyProgress:
    """How far `koto verify` is: a bar on a terminal; without one (the journal, a script), a line every few seconds."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._bar: Any = None
        self._shown = 0
        self._t0 = self._last = time.monotonic()

    def __enter__(self) -> _VerifyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.render_finish()

    def __call__(self, done: int, total: int) -> None:
        if self._tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label="verifying", file=sys.stderr,
                                              show_pos=True, show_eta=True)
            self._bar.update(done - self._shown)
            self._shown = done
            return
        now = time.monotonic()
        if now - self._last >= self.EVERY_S or done == total:
            rate = done / max(now - self._t0, 1e-9)
            click.echo(f"verify: {done:,} of {total:,} records checked ({rate:,.0f}/s)", err=True)
            self._last = now


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG", default=None,
              help=f"Gateway config (TOML). Default: $KOTO_CONFIG or {DEFAULT_CONFIG}.")
def run(config_path: str | None) -> None:
    """Run the gateway: sources, meters, ledger and sync, until SIGTERM or Ctrl-C."""
    from .entry import start_daemon

    cfg, _sd, _gid = resolve(config_path, None, need_config=True)
    assert cfg is not None  # need_config
    start_daemon(cfg)


@cli.command()
@click.option("--state-dir", type=click.Path(file_okay=False), default="demo-state", show_default=True,
              help="Where the demo keeps its ledger and key: a new or empty folder, or one an earlier demo made "
                   "(only such a folder is wiped at the start of each run; any other is refused).")
@click.option("--speed", type=click.FloatRange(1, 10_000), default=60.0, show_default=True,
              help="How much faster than real time the appliances run.")
@click.option("--minutes", type=click.FloatRange(0.1, 1000), default=None,
              help="Simulated minutes to run (default: until every appliance has finished its programme).")
def demo(state_dir: str, speed: float, minutes: float | None) -> None:
    """Meter three simulated appliances through the real driver stacks into a local ledger, then show usage."""
    import asyncio

    from .demo import run_demo

    logging.getLogger("koto").setLevel(logging.ERROR)  # the demo prints what happens; warnings would be noise
    rc = asyncio.run(run_demo(Path(state_dir), speed=speed, duration_s=None if minutes is None else minutes * 60))
    if rc:
        raise SystemExit(rc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `koto` command; return its exit code (0 ok, 1 check failed, 2 usage or config error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return guarded(lambda: cli.main(args=args, prog_name="koto", standalone_mode=False),
                       say=lambda line: click.echo(line, err=True))
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2 if e.exit_code in (1, 2) else int(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
