"""Doctor checks of the ledger: its size and write rate, and the backlog the cloud has not acknowledged.

The backlog comes from the daemon's status file while it runs (no second reader of the SD card), else from the
ledger opened read-only. The write rate is the records of the last 24 hours and the bytes they take at the
ledger's average record size: what the SD card sees per day.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .doctor import Check, Context

MB = 1024 * 1024
DAY_S = 86_400.0
BACKLOG_WARN_S = 15 * 60
BACKLOG_FAIL_S = DAY_S


def _open(ctx: Context) -> tuple[Any, str]:
    """(read-only ledger, "") or (None, why not)."""
    from metering.errors import LedgerError
    from metering.ledger import Ledger

    from .state import StateDir

    cfg = ctx.cfg
    if ctx.state_dir is None or cfg is None:
        return None, "no config"
    path = StateDir(ctx.state_dir).ledger
    try:
        path.stat()
    except PermissionError:
        return None, f"{path.parent}: permission denied (run doctor as root, sudo koto doctor, or as the service user)"
    except FileNotFoundError:
        return None, f"{path}: no ledger yet (it is made at the first start)"
    try:
        return Ledger.open(path, gateway_id=cfg.id, key=None), ""
    except (LedgerError, OSError, sqlite3.Error) as e:
        return None, f"{path}: cannot open it read-only ({e})"


def _left_behind(ctx: Context) -> Check | None:
    """What the daemon leaves when the ledger file was deleted or replaced under it (metering/ledger/fileguard.py):
    a saved copy `ledger.db.rescued`, or `ledger.db.lost` when none could be made. Either stops every start until
    someone decides, so the doctor names the file and both ways on."""
    from metering.ledger.fileguard import lost_marker, rescued_copies

    from .state import StateDir

    if ctx.state_dir is None:
        return None
    path = StateDir(ctx.state_dir).ledger
    try:
        copies = rescued_copies(path)
        lost = lost_marker(path).exists()
    except OSError:
        return None  # an unreadable folder: the state folder check says so
    if copies:
        return Check("ledger", "fail", f"{copies[0]}: the ledger as it was when its file was deleted or replaced while "
                     "Koto ran; the gateway will not start until it is dealt with",
                     f"put it back: sudo mv {copies[0]} {path} && sudo systemctl restart koto; or, for a new epoch, "
                     f"move it out of {path.parent} and keep it (it may hold records the cloud has not acknowledged)")
    if lost:
        return Check("ledger", "fail", f"{lost_marker(path)}: the ledger was deleted or replaced while Koto ran and no "
                     "copy could be saved; the gateway will not start until it is dealt with",
                     f"restore {path} from a backup, or accept the loss and start a new epoch: "
                     f"sudo rm {lost_marker(path)} && sudo systemctl restart koto")
    return None


def ledger_stats(ledger: Any, now_wall: float) -> dict[str, Any]:
    """Size, head, acked, backlog, last ack, records of the last 24 h (also the support bundle's figures)."""
    path = ledger.path
    size = path.stat().st_size
    wal = path.with_name(path.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    head, _ = ledger.head()
    acked = ledger.acked_through()
    first = ledger.first_seq_since(now_wall - DAY_S)
    per_day = 0 if first is None else head - first + 1
    last_ack = ledger.last_ack()
    return {"path": str(path), "size_bytes": size, "wal_bytes": wal_size, "epoch": ledger.epoch, "head_seq": head,
            "acked_through": acked, "backlog": head - acked, "records_last_24h": per_day,
            "bytes_per_day_estimate": int(per_day * size / head) if head else 0,
            "last_ack_wall": last_ack[1] if last_ack else None}


def check_ledger(ctx: Context) -> Check:
    left = _left_behind(ctx)
    if left is not None:
        return left
    ledger, why = _open(ctx)
    if ledger is None:
        return Check("ledger", "warn" if "no ledger yet" in why or why == "no config" else "fail", why,
                     "start the gateway (sudo systemctl start koto)" if "no ledger yet" in why else
                     "see the state folder check")
    with ledger:
        s = ledger_stats(ledger, ctx.now_wall)
    text = (f"{s['path']}: {s['size_bytes'] / MB:,.1f} MB (WAL {s['wal_bytes'] / MB:,.1f} MB), head seq "
            f"{s['head_seq']:,}; {s['records_last_24h']:,} records in the last 24 h "
            f"(~{s['bytes_per_day_estimate'] / MB:,.2f} MB/day)")
    if s["wal_bytes"] > 64 * MB:
        return Check("ledger", "warn", text + "; the WAL is large (it is checkpointed when the gateway is idle)",
                     "restart the gateway (sudo systemctl restart koto) to checkpoint it; if it grows back, report it")
    return Check("ledger", "ok", text)


def _ago(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_backlog(ctx: Context) -> Check:
    from .status import read_status

    cfg = ctx.cfg
    if cfg is None:
        return Check("backlog", "skip", "no config")
    if cfg.cloud is None:
        return Check("backlog", "ok", "no [cloud]: local metering only, nothing to sync")
    found = read_status(ctx.runtime_dir, now_wall=ctx.now_wall)
    if not found.not_running and found.data is not None:
        led = found.data.get("ledger", {})
        head, acked, backlog = led.get("head_seq", 0), led.get("acked_through", 0), led.get("backlog", 0)
        last = led.get("last_ack_wall")
        source = "daemon status"
    else:
        ledger, why = _open(ctx)
        if ledger is None:
            return Check("backlog", "warn", f"the daemon is not running and the ledger cannot be read: {why}",
                         "start the gateway (sudo systemctl start koto)")
        with ledger:
            s = ledger_stats(ledger, ctx.now_wall)
        head, acked, backlog, last = s["head_seq"], s["acked_through"], s["backlog"], s["last_ack_wall"]
        source = "ledger; the daemon is not running"
    age = None if last is None else max(0.0, ctx.now_wall - float(last))
    text = (f"head seq {head}, cloud acked through {acked}, backlog {backlog}, last ack "
            f"{'never' if age is None else _ago(age) + ' ago'} (from the {source})")
    if backlog == 0:
        return Check("backlog", "ok", text)
    fix = "see the broker checks above; the gateway resends on its own once the cloud acknowledges again"
    if age is None or age > BACKLOG_FAIL_S:
        return Check("backlog", "fail", text, fix)
    if age > BACKLOG_WARN_S:
        return Check("backlog", "warn", text, fix)
    return Check("backlog", "ok", text)
