"""The snapshot the daemon writes to its status file (`gateway.status`): built from the running gateway and the
ledger in a worker thread every few seconds.

Today's energy, uses and cost come from the ledger, bounded to today's records: the first seq of the local day is
found once a day (the scan stops at it) and every refresh sums from there, so the cost does not grow with the
ledger's age.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from koto import __version__

from .status import VERSION

if TYPE_CHECKING:
    from .daemon import Gateway


class SnapshotBuilder:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.started_wall = gw.clock.now().wall
        self._day_start: float | None = None
        self._day_seq = 0

    def __call__(self) -> dict[str, Any]:
        gw = self.gw
        now = gw.clock.now()
        report = gw.report()
        ledger = gw.ledger
        head, _ = ledger.head()
        acked = ledger.acked_through()
        last_ack = ledger.last_ack()
        today = self._today(now.wall)
        appliances = {}
        for aid, a in report["appliances"].items():
            appliances[aid] = {**a, "today": today.get(aid, {"energy_mwh": 0, "uses": 0, "cost_minor": {}})}
        data: dict[str, Any] = {
            "version": VERSION,
            "koto": __version__,
            "gateway": gw.cfg.id,
            "pid": os.getpid(),
            "state": "running",
            "started_wall": self.started_wall,
            "written_wall": now.wall,
            "appliances": appliances,
            "sources": report["sources"],
            "ledger": {"epoch": ledger.epoch, "head_seq": head, "acked_through": acked, "backlog": head - acked,
                       "last_ack_wall": last_ack[1] if last_ack else None},
            "clock": {"synced": bool(now.synced)},
            "cloud": None,
            "entitlements": self.gw.pricing.entitlements.in_force(now.wall),
            "currency_exponents": self.gw.pricing.currency_exponents(),
        }
        if gw.sync is not None:
            h = gw.sync.health_report()
            data["cloud"] = {"connected": bool(h.get("connected")), "broker": h.get("broker"),
                             "last_error": h.get("last_error", ""), "last_ack": h.get("last_ack", "")}
        return data

    def _today(self, now_wall: float) -> dict[str, dict[str, Any]]:
        tz = self.gw.cfg.tz
        midnight = datetime.fromtimestamp(now_wall, tz).replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight.timestamp()
        ledger = self.gw.ledger
        if start != self._day_start:
            first = ledger.first_seq_since(start, from_seq=self._day_seq)
            self._day_seq = first if first is not None else ledger.head()[0] + 1
            self._day_start = start
        out: dict[str, dict[str, Any]] = {}
        for r in ledger.iter_usage(None, start, "function", tz, from_seq=self._day_seq):
            t = out.setdefault(r.appliance, {"energy_mwh": 0, "uses": 0, "cost_minor": {}})
            t["energy_mwh"] += r.energy_mwh
            t["uses"] += r.uses
            for cur, minor in r.costs:
                t["cost_minor"][cur] = t["cost_minor"].get(cur, 0) + minor
        return out

