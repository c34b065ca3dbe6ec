"""`koto usage`: what was metered, read back from the ledger, in the shape a billing question needs.

`--by function|day` sums (gaps are their own rows, named by reason); `--by cycle` lists each use with its local
times, whether it was entitled and when the cloud acked it; `--by record` lists every record. `--json` writes one
JSON object per line with exact integers, `--mwh` prints exact milliwatt-hours. Before the figures, the records the
report reads are verified (up to QUICK_VERIFY of them, every record's content, chain and hash, and the last one's
signature, which the chain ties them to; `koto verify` walks all and checks every signature): totals from a ledger
that fails are printed with a warning, never silently.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

import click

from .cli_common import config_option, open_ledger_ro, parse_since, resolve, state_option
from .errors import UnknownName

QUICK_VERIFY = 5_000  # their content and one signature: ~0.3 CPU s here; `koto verify` walks them all


@click.command()
@config_option
@state_option
@click.option("--appliance", default=None, help="Only this appliance.")
@click.option("--since", default=None, help="From this local date/time (YYYY-MM-DD, ISO time, 'today', or 7d).")
@click.option("--by", type=click.Choice(["function", "day", "cycle", "record"]), default="function",
              show_default=True, help="Sum per function or day, or list each use (cycle) or each record.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, exact integers (mWh, ms).")
@click.option("--mwh", is_flag=True, help="Energy as exact milliwatt-hours instead of kWh.")
@click.option("--no-verify", is_flag=True, help="Skip the quick check of the records the report reads.")
def usage(config_path: str | None, state_dir: str | None, appliance: str | None, since: str | None, by: str,
          as_json: bool, mwh: bool, no_verify: bool) -> None:
    """Energy, time, uses and cost per function, day, use or record, with sync and entitlement state."""
    cfg, sd, gid = resolve(config_path, state_dir)
    tz = cfg.tz if cfg else ZoneInfo("UTC")
    since_wall = parse_since(since, tz)
    with open_ledger_ro(sd, gid) as ledger:
        known = ledger.appliances()
        if appliance is not None and appliance not in known:
            configured = {a.id for a in cfg.appliances} if cfg else set()
            if appliance not in configured:
                raise UnknownName("appliance", appliance, sorted(set(known) | configured))
        checked: Callable[[], None] = _nothing if no_verify else _start_quick_verify(ledger, sd, gid, since_wall)
        width = max((len(a) for a in known), default=9)
        if by in ("function", "day") and not as_json:
            # A handful of rows per appliance (a few thousand a year by day): summed while the check runs on the
            # other core (SQLite leaves Python's lock while it reads), printed once the check has spoken.
            rows = list(ledger.iter_usage(appliance, since_wall, by, tz))
            checked()
            n = _report(ledger, by, appliance, since_wall, tz, as_json=as_json, exact=mwh, width=width, rows=rows)
        elif by == "cycle":
            # Every use is summed and sorted by SQLite before the first one comes (off Python's lock, ~0.7 s on a
            # million records): done while the check runs, the uses printed once it has spoken.
            uses = ledger.iter_cycles(appliance, since_wall)
            first = next(uses, None)
            checked()
            n = _report(ledger, by, appliance, since_wall, tz, as_json=as_json, exact=mwh, width=width,
                        rows=[] if first is None else itertools.chain((first,), uses))
        else:
            checked()
            n = _report(ledger, by, appliance, since_wall, tz, as_json=as_json, exact=mwh, width=width)
        if by == "function" and since_wall is None and not as_json:
            n += _pruned_report(ledger, appliance, exact=mwh)
    if not n and not as_json:
        what = (f" for {appliance}" if appliance else "") + (f" since {since}" if since else "")
        click.echo(f"no usage recorded{what}")


def _report(ledger: Any, by: str, appliance: str | None, since_wall: float | None, tz: Any, *, as_json: bool,
            exact: bool, width: int, rows: Iterable[Any] | None = None) -> int:
    from .usage_detail import write_cycles, write_records
    from .usage_report import write_usage_table

    known = currency_exponents(ledger)
    if by in ("cycle", "record"):
        with _Lines() as out:
            if by == "cycle":
                return write_cycles(ledger.iter_cycles(appliance, since_wall) if rows is None else rows, tz, out,
                                    exact=exact, as_json=as_json, app_width=width, known=known)
            return write_records(ledger.iter_record_rows(appliance, since_wall), tz, out, exact=exact,
                                 as_json=as_json, app_width=width, known=known)
    if as_json:
        n = 0
        for r in ledger.iter_usage(appliance, since_wall, by, tz):
            click.echo(json.dumps({"appliance": r.appliance, by: r.key, "energy_mwh": r.energy_mwh,
                                   "duration_ms": r.duration_ms, "uses": r.uses, "cost_minor": dict(r.costs),
                                   "records": r.records}, sort_keys=True))
            n += 1
        return n
    if rows is not None:
        held = list(rows)
        return write_usage_table(lambda: held, by, click.echo, exact=exact, known=known)
    return write_usage_table(lambda: ledger.iter_usage(appliance, since_wall, by, tz), by, click.echo, exact=exact,
                             known=known)


def currency_exponents(ledger: Any) -> dict[str, int]:
    """The minor-unit exponent of each currency a tariff the gateway holds prices in, from the daemon's pricing
    checkpoint (koto.money falls back to ISO 4217 for the others). A checkpoint it cannot read gives none."""
    from .config_tariff import PRICING_CHECKPOINT

    state = ledger.checkpoint(PRICING_CHECKPOINT) or {}
    tariffs = state.get("tariffs") if isinstance(state, dict) else None
    out: dict[str, int] = {}
    for t in tariffs if isinstance(tariffs, list) else []:
        if isinstance(t, dict) and isinstance(t.get("currency"), str) and isinstance(t.get("exponent"), int):
            out[t["currency"]] = t["exponent"]
    return out


class _Lines:
    """An `out` for listings of a hundred thousand lines: written a few thousand at a time, where `click.echo` per
    line would write (and flush) each one on its own."""

    EVERY = 2000

    def __init__(self) -> None:
        self._held: list[str] = []

    def __call__(self, line: str) -> None:
        self._held.append(line)
        if len(self._held) >= self.EVERY:
            self.flush()

    def flush(self) -> None:
        if self._held:
            click.echo("\n".join(self._held))
            self._held.clear()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _pruned_report(ledger: Any, appliance: str | None, *, exact: bool) -> int:
    """A local-only gateway's totals of the records retention removed (gateway/housekeeping.py), after the table."""
    from .housekeeping import pruned_rows
    from .usage_report import write_usage_table

    rows = pruned_rows(ledger, appliance)
    if rows:
        click.echo(f"\nbefore seq {ledger.anchor()[0]}: removed by retention (retain_days), kept as totals:")
        write_usage_table(lambda: iter(rows), "function", click.echo, exact=exact)
    return len(rows)


def _start_quick_verify(ledger: Any, sd: Any, gid: str | None, since_wall: float | None) -> Callable[[], None]:
    """Start verifying the records the report reads (the last QUICK_VERIFY at most) on a thread with its own
    connection; returns the function that waits for it and warns on stderr when they fail."""
    head, _ = ledger.head()
    first = ledger.first_seq_since(since_wall) if since_wall is not None and head else 1
    if not head or first is None:
        return lambda: None
    first = max(first, head - QUICK_VERIFY + 1)
    try:
        key = sd.public_key()
    except (OSError, ValueError) as e:
        message = f"warning: cannot check the ledger's signatures ({e}); run `koto verify`"
        return lambda: click.echo(message, err=True)
    found: list[Any] = []

    def check() -> None:
        try:
            with open_ledger_ro(sd, gid) as own:
                found.append(own.verify(key, from_seq=first, workers=1, every_signature=False))
        except Exception as e:  # reported by the waiting side, as any other failed check
            found.append(e)

    worker = threading.Thread(target=check, name="koto-usage-verify", daemon=True)
    worker.start()

    def wait() -> None:
        worker.join()
        report = found[0] if found else None
        if isinstance(report, Exception):
            click.echo(f"warning: cannot check the ledger ({report}); run `koto verify`", err=True)
        elif report is not None and not report.ok:
            where = f"seq {report.first_bad_seq}" if report.first_bad_seq is not None else "the ledger"
            click.echo(f"warning: the ledger does not verify (FAILED at {where}: {report.reason}); these figures "
                       "may be wrong: run `koto verify` and keep the file for support", err=True)

    return wait


def _nothing() -> None:
    return None
