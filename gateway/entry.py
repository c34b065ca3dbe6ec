"""The `koto` console script. `koto run`, the daemon that stays resident for months, starts here without click;
every other command (and `koto run --help`, or any argument this parser does not know) goes to `gateway.cli`.

click with its group and the commands' option declarations costs the daemon about 1.3 MiB of RSS for arguments it
parses once (docs/performance.md). The daemon's command line is small and fixed, as the
systemd unit writes it: `koto [-v|-vv|--verbose ...] run [--config FILE | --config=FILE]`, the config defaulting
to $KOTO_CONFIG and then /etc/koto/koto.toml. Anything else, and the case where no config is found (whose message
click words), takes the full CLI: what a person typing sees is the same either way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from koto.errors import KotoError, explain_os_error

if TYPE_CHECKING:
    from .config import GatewayConfig

DEFAULT_CONFIG = "/etc/koto/koto.toml"  # every command's default config (gateway.cli_common imports it)
VERBOSE = {"-v": 1, "-vv": 2, "-vvv": 3, "--verbose": 1}


def daemon_args(args: Sequence[str], environ: dict[str, str] | None = None) -> tuple[int, str] | None:
    """(verbosity, config path) when `args` is exactly a `koto run` the light path handles, else None."""
    env = os.environ if environ is None else environ
    verbose, i = 0, 0
    while i < len(args) and args[i] in VERBOSE:
        verbose += VERBOSE[args[i]]
        i += 1
    if list(args[i:i + 1]) != ["run"]:
        return None
    rest = list(args[i + 1:])
    config: str | None = None
    if len(rest) == 2 and rest[0] == "--config" and rest[1] and not rest[1].startswith("-"):
        config = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        config = rest[0][len("--config="):]
    elif rest:
        return None
    if config is None:
        config = env.get("KOTO_CONFIG") or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    return (verbose, config) if config else None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def guarded(body: Callable[[], None], say: Callable[[str], None] = _say) -> int:
    """Run a command's body; turn the errors a person can fix into plain lines and an exit code (2), as `koto` does
    for every command (gateway.cli.main adds click's own errors around this)."""
    try:
        body()
    except KotoError as e:
        for line in str(e).splitlines():  # a config with several problems: one line each
            say(f"koto: {line}")
        return 2
    except OSError as e:  # a folder owned by root, a full disk, a read-only card: one line that says what to do
        say(f"koto: {explain_os_error(e)}")
        return 2
    except BaseExceptionGroup as group:  # the daemon's TaskGroup: plain errors stay plain lines
        plain, rest = group.split((KotoError, OSError))
        if rest is not None or plain is None:
            raise
        for leaf in _leaves(plain):
            text = explain_os_error(leaf) if isinstance(leaf, OSError) and not isinstance(leaf, KotoError) else leaf
            say(f"koto: {text}")
        return 2
    except SystemExit as e:  # commands that exit with a code (verify)
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def run_daemon(config_path: str, verbose: int = 0) -> None:
    """`koto run` on the light path: the logging gateway.cli's group sets up, then its `run` command's body."""
    from .config import load_config
    from .logs import setup_logging

    setup_logging(logging.WARNING - 10 * min(verbose, 2))
    start_daemon(load_config(config_path))


def start_daemon(cfg: GatewayConfig) -> None:
    """The daemon until SIGTERM or Ctrl-C (both paths of `koto run`)."""
    import asyncio

    from .runner import run_gateway

    koto_log = logging.getLogger("koto")
    if koto_log.getEffectiveLevel() > logging.INFO:
        koto_log.setLevel(logging.INFO)  # the journal gets one line per event a person cares about, by default
    asyncio.run(run_gateway(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: `koto run` without click, everything else through gateway.cli.main."""
    args = list(sys.argv[1:] if argv is None else argv)
    daemon = daemon_args(args)
    if daemon is None:
        from .cli import main as cli_main

        return cli_main(args)
    verbose, config = daemon
    return guarded(lambda: run_daemon(config, verbose))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
