"""What the status page shows, gathered without ever holding up the metering loop.

Two kinds of facts, read two ways:

- **live** (`live()`): each appliance's power and function, the sources' health, the cloud connection, the
  entitlements and which appliance is locked. All of it is already in the daemon's memory, so it is read on the
  event loop with attribute reads only — never the writer's ledger connection, whose lock an append holds through
  its fsync.
- **from the ledger** (`figures()`): usage and cost per function today and this month, the last 30 days per function
  for the chart, and how far the cloud has acked. The daemon owns its ledger (SQLite's exclusive locking mode: no
  `-shm` file to write, and no second connection can open it, not even in this process), so these are read on the
  ledger's own connection (`Ledger.read`), in a worker thread (`asyncio.to_thread`): they take turns with the
  appends under the ledger's lock, and the event loop never waits for either. Summed by SQLite: the month and today
  with the queries `koto usage` uses (`metering.ledger.usage.usage_groups`, from the period's first seq), the chart
  as one range of the usage index per group (its 30 days' entries only), in four short calls (this month, today,
  the chart, the ack state), so an append waits for one of them at most: on a million-record ledger (a year of 8
  appliances, about 83,000 records a month) the longest call, the chart's, held the lock 148 ms with the file out
  of the page cache, 35 ms in it; the month 6 ms (bench/ledger_reads.py, docs/performance.md). An append between
  two calls may show in one figure and not yet in the next, for one refresh. Cached for `FIGURES_EVERY_S`, so a
  page reloaded by several phones costs one pass.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from metering.errors import LedgerError

if TYPE_CHECKING:
    from metering.ledger import Ledger

    from ..daemon import Gateway

FIGURES_EVERY_S = 5.0
CHART_DAYS = 30
STALE_SOURCE_S = 120.0


@dataclass
class Figures:
    """Usage per (appliance, function): today, this month, and per day for the chart; the cloud's ack state."""

    today: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    month: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)  # the chart's local dates, oldest first
    daily: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # energy mWh per day, as `days`
    head_seq: int = 0
    acked_through: int = 0
    last_ack_wall: float | None = None
    error: str = ""


def _sums(rows: Any) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.key.startswith("gap"):
            continue  # energy nobody watched is billed to no function; `koto usage` lists it
        out[(r.appliance, r.key)] = {"energy_mwh": r.energy_mwh, "uses": r.uses, "costs": dict(r.costs),
                                     "duration_ms": r.duration_ms}
    return out


class LedgerReader:
    """The page's figures, read on the daemon's own ledger connection (`Ledger.read`), one short call each."""

    def __init__(self, ledger: Ledger, tz: Any) -> None:
        self.ledger = ledger
        self.tz = tz

    def read(self, now_wall: float) -> Figures:
        """Blocking (a worker thread): the figures at `now_wall`. Raises sqlite3.Error or LedgerError (a closed
        ledger) when the ledger cannot be read."""
        from metering.ledger.usage import fold, usage_groups

        now = datetime.fromtimestamp(now_wall, self.tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month_start = midnight.replace(day=1)
        first_day = (midnight - timedelta(days=CHART_DAYS - 1))
        f = Figures()

        def sums(since: datetime) -> Callable[[sqlite3.Connection], dict[tuple[str, str], dict[str, Any]]]:
            def read(conn: sqlite3.Connection) -> dict[tuple[str, str], dict[str, Any]]:
                seq = self._first_seq(conn, since.timestamp())
                if seq is None:
                    return {}
                # `usage_groups` is a cursor: consumed here, inside the call, under the ledger's lock.
                return _sums(fold(usage_groups(conn, None, since.timestamp(), "function", self.tz, seq), "function"))
            return read

        f.month = self.ledger.read(sums(month_start))
        f.today = self.ledger.read(sums(midnight))
        f.days, f.daily = self.ledger.read(lambda conn: self._daily(conn, first_day))
        f.head_seq, f.acked_through, f.last_ack_wall = self.ledger.read(self._acks)
        return f

    @staticmethod
    def _acks(conn: sqlite3.Connection) -> tuple[int, int, float | None]:
        row = conn.execute("SELECT value FROM kv WHERE key='head_seq'").fetchone()
        head_seq = int(row[0]) if row else 0
        row = conn.execute("SELECT value FROM kv WHERE key='acked_through'").fetchone()
        acked_through = int(row[0]) if row else 0
        try:
            row = conn.execute("SELECT at_ms FROM acks ORDER BY through DESC LIMIT 1").fetchone()
            last_ack_wall = row[0] / 1000 if row else None
        except sqlite3.OperationalError:  # an older ledger without the acks table
            last_ack_wall = None
        return head_seq, acked_through, last_ack_wall

    @staticmethod
    def _first_seq(conn: sqlite3.Connection, since_wall: float) -> int | None:
        """The first seq of a record ending at or after `since_wall`: a seek per group in the usage index (a scan
        in seq order would read the table's year of rows before this morning's, 130 ms of the lock on a million)."""
        from metering.ledger.usage import first_seq_since_indexed

        since_ms = round(since_wall * 1000)
        found = first_seq_since_indexed(conn, since_ms, 0)
        if found is not False:  # False: a ledger without the index
            return None if found is None else int(found)
        row = conn.execute("SELECT seq FROM records WHERE t_end_ms >= ? ORDER BY seq LIMIT 1", (since_ms,)).fetchone()
        return None if row is None else int(row[0])

    def _daily(self, conn: sqlite3.Connection, first_day: datetime) -> tuple[list[str], dict[tuple[str, str],
                                                                                           list[int]]]:
        """Energy per appliance, function and local day for the chart: the day found by comparing `t_end_ms` with
        the local midnights (computed here, so a daylight-saving change is right). One range of the usage index
        per (appliance, kind, function, currency), found by skipping through it (`group_keys`): the 30 days'
        entries only. (One GROUP BY over all the records read the whole index, 74 MB on a million records: 0.17 s
        of the ledger's lock from the page cache, 1.7 s from the disk.)"""
        from metering.ledger.store import PARTITION
        from metering.ledger.usage import group_keys

        starts = []
        day = first_day
        for _ in range(CHART_DAYS + 1):
            starts.append(round(day.timestamp() * 1000))
            day = (day + timedelta(days=1, hours=3)).replace(hour=0)  # the next local midnight, DST or not
        days = [datetime.fromtimestamp(ms / 1000, self.tz).date().isoformat() for ms in starts[:-1]]
        case = "CASE " + "".join(f"WHEN t_end_ms < {ms} THEN {i - 1} " for i, ms in enumerate(starts) if i) + "END"
        sql = (f"SELECT {case} AS d, sum(energy_mwh) FROM records WHERE type=? AND appliance=? AND kind=? "
               "AND function=? AND currency=? AND t_end_ms>=? AND t_end_ms<? GROUP BY d")
        daily: dict[tuple[str, str], list[int]] = {}
        for app, kind, fn, cur in list(group_keys(conn)):
            if kind not in PARTITION or fn == "":
                continue
            for d, mwh in conn.execute(sql, ("io.koto.usage.v1", app, kind, fn, cur, starts[0], starts[-1])):
                daily.setdefault((app, fn), [0] * CHART_DAYS)[int(d)] += int(mwh or 0)
        return days, daily


_WORDS = {"revoked": "was withdrawn", "not yet valid": "has not started yet", "expired": "has ended",
          "used up": "is used up"}


def plain_reason(reasons: list[str]) -> str:
    """The entitlement book's reasons ("gated by config and no entitlement given", "ent-7 expired") in words."""
    out = []
    for r in reasons:
        if r.startswith("gated by config"):
            out.append("it only starts when it is unlocked, and nothing is unlocked for it")
            continue
        for part in r.split("; "):
            ent, _, why = part.partition(" ")
            out.append(f"its unlock {ent} {_WORDS.get(why, why)}")
    return "; ".join(dict.fromkeys(out)) or "nothing is unlocked for it"


class PageData:
    """The page's view of a running gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.reader = LedgerReader(gw.ledger, gw.cfg.tz)
        self._figures: Figures | None = None
        self._figures_at = 0.0
        self._lock = asyncio.Lock()

    async def figures(self) -> Figures:
        async with self._lock:
            if self._figures is None or time.monotonic() - self._figures_at >= FIGURES_EVERY_S:
                now = self.gw.clock.now().wall
                try:
                    self._figures = await asyncio.to_thread(self.reader.read, now)
                except (sqlite3.Error, LedgerError) as e:
                    self._figures = Figures(error=f"cannot read the ledger ({e})")
                self._figures_at = time.monotonic()
            return self._figures

    def live(self) -> dict[str, Any]:
        """Everything that changes second by second, from memory (cheap: the JSON endpoint serves it)."""
        gw = self.gw
        now = gw.clock.now()
        appliances: dict[str, Any] = {}
        for aid, m in list(gw.meters.items()):
            appliances[aid] = {"function": m.function or "", "power_mw": m.power_mw, "profile": m.profile.name,
                               "functions": list(m.profile.function_names()), "lock": self._lock_of(aid, now.wall)}
        sources = {}
        for name, st in list(gw.sources.items()):
            h = st.source.health if st.source is not None else None
            sources[name] = {"appliance": st.appliance, "state": h.state if h else "starting",
                             "age_s": h.age_s() if h else None, "restarts": st.restarts, "last_error": st.last_error}
        cloud = None
        if gw.sync is not None:
            sh = asdict(gw.sync.health)
            cloud = {"connected": bool(sh["connected"]), "last_ack": sh["last_ack"], "last_error": sh["last_error"]}
        return {"now": now.wall, "clock_synced": bool(now.synced), "appliances": appliances, "sources": sources,
                "cloud": cloud, "configured_cloud": gw.cfg.cloud is not None,
                "entitlements": gw.pricing.entitlements.in_force(now.wall), "pairing": gw.pairing.active,
                "currency_exponents": gw.pricing.currency_exponents(),
                "writer_stalled_s": gw.writer_stalled_s()}

    def _lock_of(self, aid: str, now_wall: float) -> dict[str, Any] | None:
        """Why the appliance may not start, when its enforcement relay keeps it from starting; None otherwise."""
        gw = self.gw
        relay = gw.relays.get(aid)
        if relay is None:
            return None
        meter = gw.meters[aid]
        reasons = []
        for fn in ("*", *meter.profile.function_names()):
            d = gw.pricing.allows(aid, fn, now_wall)
            if d.entitled:
                return None
            if d.reason and d.reason not in reasons:
                reasons.append(d.reason)
        return {"reason": plain_reason(reasons),
                "running": bool(meter.cycle.running), "powered": bool(relay.powered)}

