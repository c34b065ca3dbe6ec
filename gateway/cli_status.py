"""`koto status`: one screen of what the running gateway is doing, from the status file the daemon refreshes
(`gateway.status`); readable by an operator in the `koto` group without touching the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .status import read_status, render
from .status import runtime_dir as default_runtime_dir


@click.command()
@click.option("--runtime-dir", type=click.Path(file_okay=False), default=None,
              help="Where the daemon writes status.json. Default: $RUNTIME_DIRECTORY or /run/koto.")
@click.option("--json", "as_json", is_flag=True, help="The snapshot as JSON (for remote support).")
def status(runtime_dir: str | None, as_json: bool) -> None:
    """Appliances, today's usage, sources, backlog and last cloud ack, clock and entitlements. Exit 1 when the
    daemon is not running."""
    folder = Path(runtime_dir) if runtime_dir else default_runtime_dir()
    found = read_status(folder)
    if as_json:
        click.echo(json.dumps({"running": not found.not_running, "problem": found.not_running or None,
                               "status": found.data}, sort_keys=True, indent=2))
    else:
        if found.not_running:
            click.echo(found.not_running, err=True)
        if found.data is not None:
            if found.not_running:
                click.echo("last status written by the daemon:", err=True)
            for line in render(found.data):
                click.echo(line)
    if found.not_running:
        raise SystemExit(1)
