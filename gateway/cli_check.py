"""`koto check --config FILE`: validate a config and everything it names, print every problem, start nothing."""

from __future__ import annotations

import click

from .cli_common import DEFAULT_CONFIG
from .config_check import check_config


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, help="Gateway config (TOML) to check.")
@click.option("--no-state", is_flag=True,
              help="Do not look at the ledger (whether an edited [tariff] will apply at the next start).")
@click.option("--bootfs", is_flag=True,
              help="The config is on a card's boot partition (or in the folder you will copy to it): files it names "
                   "under /etc/koto are read from beside it, as the first boot imports them.")
def check(config_path: str, no_state: bool, bootfs: bool) -> None:
    """Check a config: keys, profiles, tariff, hardware conflicts, the certificate and key files it names and the
    broker URL. Every problem is printed (file: key: problem); exit 1 if there is any."""
    report = check_config(config_path, with_state=not (no_state or bootfs), bootfs=bootfs)
    for e in report.problems:
        click.echo(str(e))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for line in report.additions:  # what pairing and learn mode added in the state folder (docs/household.md)
        click.echo(f"household: {line}")
    if report.problems:
        n = len(report.problems)
        click.echo(f"{config_path}: {n} problem{'s' if n != 1 else ''}; nothing was started", err=True)
        raise SystemExit(1)
    cfg = report.config
    assert cfg is not None
    sources = sum(len(a.sources) for a in cfg.appliances)
    cloud = f"cloud {cfg.cloud.broker}" if cfg.cloud else "no cloud (local metering only)"
    click.echo(f"ok: {config_path}: gateway {cfg.id}, {len(cfg.appliances)} appliance(s), {sources} source(s), "
               f"{cloud}")
