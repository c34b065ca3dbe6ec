"""`koto doctor`: every check with ok / warn / fail and one line of what to do; exit 1 on any fail."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import DEFAULT_CONFIG, state_option
from .doctor import DEFAULT_USER, make_context, render, run_doctor


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, help="Gateway config (TOML).")
@state_option
@click.option("--user", "user", default=DEFAULT_USER, show_default=True,
              help="The user the service runs as (permissions and groups are judged for it).")
@click.option("--runtime-dir", type=click.Path(file_okay=False), default=None,
              help="Where the daemon writes status.json. Default: $RUNTIME_DIRECTORY or /run/koto.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds to wait for each network step (DNS, TCP, TLS, MQTT) and D-Bus.")
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON (for remote support).")
def doctor(config_path: str, state_dir: str | None, user: str, runtime_dir: str | None, timeout: float,
           as_json: bool) -> None:
    """Check config, state folder, service user and groups, GPIO, serial ports, BLE, clock, broker (DNS, TCP,
    TLS, auth), certificates, disk, ledger and backlog; say what to do about each problem. Exit 1 on any fail."""
    ctx = make_context(config_path, state_dir=state_dir, user=user,
                       runtime_dir=Path(runtime_dir) if runtime_dir else None, timeout_s=timeout)
    checks = run_doctor(ctx)
    if as_json:
        click.echo(json.dumps({"ok": not any(c.status == "fail" for c in checks),
                               "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for line in render(checks):
            click.echo(line)
    if any(c.status == "fail" for c in checks):
        raise SystemExit(1)
