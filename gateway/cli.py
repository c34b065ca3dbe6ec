"""`koto`: the gateway's command line, for installers and support staff.

Every command is a click command; `main(argv) -> int` runs one and returns its exit code, so tests call it directly
and the console script calls it through `sys.exit(main())`. Errors that a person can fix (a config key, a missing
key file) print one plain line and exit 2; `koto verify` exits 1 naming the first bad seq.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from koto import __version__

from .errors import KotoError

DEFAULT_CONFIG = "/etc/koto/koto.toml"


def _config_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG", default=None,
        help=f"Gateway config (TOML). Default: $KOTO_CONFIG or {DEFAULT_CONFIG} when it exists.",
    )(f)


def _state_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--state-dir", type=click.Path(file_okay=False), envvar="KOTO_STATE_DIR", default=None,
        help="State folder (ledger.db, keys/). Overrides the config's gateway.state_dir.",
    )(f)


def _resolve(config_path: str | None, state_dir: str | None, *, need_config: bool = False):  # type: ignore[no-untyped-def]
    """Return (config or None, StateDir, gateway id or None)."""
    from .config import load_config
    from .state import StateDir

    cfg = None
    if config_path is None and Path(DEFAULT_CONFIG).exists():
        config_path = DEFAULT_CONFIG
    if config_path is not None:
        cfg = load_config(config_path)
    elif need_config:
        raise click.UsageError(f"no config: pass --config FILE (or set KOTO_CONFIG, or create {DEFAULT_CONFIG})")
    if state_dir is not None:
        sd = StateDir(Path(state_dir))
    elif cfg is not None:
        sd = StateDir(cfg.state_dir)
    else:
        raise click.UsageError("say where the state is: --state-dir DIR or --config FILE")
    return cfg, sd, (cfg.id if cfg else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="koto")
@click.option("-v", "--verbose", count=True, help="More log detail (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Koto gateway: meter the use of appliance functions into a signed ledger and sync it to the billing cloud."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


@cli.command()
@_config_option
@_state_option
@click.option("--force", is_flag=True, help="Replace an existing device key (the old ledger then no longer verifies).")
def provision(config_path: str | None, state_dir: str | None, force: bool) -> None:
    """Create the state folder and the device key; print the public key to register at the billing cloud."""
    _cfg, sd, _gid = _resolve(config_path, state_dir)
    pem, created = sd.provision(force=force)
    click.echo(f"{'created' if created else 'kept existing'} device key {sd.private_key_path} (mode 0600)", err=True)
    click.echo(f"public key written to {sd.public_key_path}; register it at the billing cloud:", err=True)
    click.echo(pem, nl=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `koto` command; return its exit code (0 ok, 1 check failed, 2 usage or config error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="koto", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2 if e.exit_code in (1, 2) else int(e.exit_code)
    except KotoError as e:
        click.echo(f"koto: {e}", err=True)
        return 2
    except SystemExit as e:  # commands that exit with a code (verify)
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
