"""What every `koto` command shares: the --config and --state-dir options, finding the config and the state folder,
opening the ledger read-only with a plain error, and reading a `--since` time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from koto.files import access_problem

from .config import GatewayConfig, load_config
from .entry import DEFAULT_CONFIG as DEFAULT_CONFIG  # re-exported: every command names it
from .state import StateDir


def config_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), envvar="KOTO_CONFIG", default=None,
        help=f"Gateway config (TOML). Default: $KOTO_CONFIG or {DEFAULT_CONFIG} when it exists.",
    )(f)


def state_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--state-dir", type=click.Path(file_okay=False), envvar="KOTO_STATE_DIR", default=None,
        help="State folder (ledger.db, keys/). Overrides the config's gateway.state_dir.",
    )(f)


def resolve(config_path: str | None, state_dir: str | None, *,
             need_config: bool = False) -> tuple[GatewayConfig | None, StateDir, str | None]:
    """Return (config or None, StateDir, gateway id or None)."""
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


def open_ledger_ro(sd: StateDir, gid: str | None) -> Any:
    from metering.errors import LedgerError
    from metering.ledger import Ledger, read_gateway_id
    from metering.ledger.lease import reader_lease

    if not sd.ledger.exists():
        raise click.ClickException(f"{sd.ledger}: no ledger yet (start the gateway, or `koto demo`)")
    try:
        # A lease over both reads, so that the daemon lends its ledger once, not twice (it could take it back
        # between `read_gateway_id`'s lease and the Ledger's own, which it holds until it is closed).
        with reader_lease(sd.ledger):
            return Ledger.open(sd.ledger, gateway_id=gid or read_gateway_id(sd.ledger), key=None)
    except LedgerError:
        problem = access_problem(sd.ledger, write=False)  # the usual cause: a state folder of another user
        if problem:
            raise LedgerError(problem) from None
        raise


def parse_since(text: str | None, tz: Any) -> float | None:
    if not text:
        return None
    from datetime import datetime, timedelta

    now = datetime.now(tz)
    if text in ("today",):
        return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if text.endswith("d") and text[:-1].isdigit():
        return (now - timedelta(days=int(text[:-1]))).timestamp()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: use YYYY-MM-DD, an ISO time, 'today' or Nd (e.g. 7d)") from e
    return (dt if dt.tzinfo else dt.replace(tzinfo=tz)).timestamp()
