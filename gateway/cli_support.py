"""`koto support-bundle`: a redacted tar.gz of config, doctor, status, ledger statistics, last records and logs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_common import DEFAULT_CONFIG, state_option
from .doctor import DEFAULT_USER


@click.command("support-bundle")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, help="Gateway config (TOML).")
@state_option
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Where to write it. Default: ./koto-support-GATEWAY-TIME.tar.gz")
@click.option("--user", default=DEFAULT_USER, show_default=True, help="The user the service runs as (for doctor).")
@click.option("--runtime-dir", type=click.Path(file_okay=False), default=None,
              help="Where the daemon writes status.json. Default: $RUNTIME_DIRECTORY or /run/koto.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="Seconds for each of doctor's network steps.")
def support_bundle(config_path: str, state_dir: str | None, out: str | None, user: str, runtime_dir: str | None,
                   timeout: float) -> None:
    """Pack config (secrets redacted), doctor and status JSON, ledger statistics, each appliance's last records and
    recent logs into one tar.gz to send to support. Prints the file's path."""
    from .support_bundle import make_bundle

    tty = sys.stderr.isatty()

    def progress(step: str) -> None:
        if tty:
            click.echo(f"support-bundle: {step}...", err=True)

    path = make_bundle(Path(config_path), Path(out) if out else None, state_dir=Path(state_dir) if state_dir else None,
                       runtime_dir=Path(runtime_dir) if runtime_dir else None, user=user, timeout_s=timeout,
                       progress=progress)
    click.echo(str(path))
