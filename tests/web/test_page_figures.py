"""The page's figures from a real ledger, read on the writer's own connection (`Ledger.read`; the daemon's ledger is
exclusively locked, so a second connection could not read it): usage per function today and this month as `koto
usage` sums them, and the chart's days in local time, right across a daylight-saving change."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.web.model import CHART_DAYS, LedgerReader, PageData
from koto.signing import PrivateKey
from metering.ledger import Ledger
from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft

BERLIN = ZoneInfo("Europe/Berlin")


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def record(end: float, function: str, wh: int, cost: int = 0) -> UsageRecord:
    return UsageRecord(kind=RecordKind.FUNCTION, appliance="washer", source="washer-meter", function=function,
                       t_start_mono_ns=0, t_end_mono_ns=60 * 10**9, t_start_wall=end - 60, t_end_wall=end,
                       boot_id="b", time_status=TimeStatus.SYNCED, energy_mwh=wh * 1000, duration_ms=60_000,
                       currency="EUR" if cost else "", cost_minor=cost)


def test_today_this_month_and_each_local_day_are_summed_right_across_daylight_saving(
        tmp_path: Path, key: PrivateKey) -> None:
    recs = [
        record(local("2026-10-25T00:30:00"), "heat", 100),  # still summer time (UTC+2)
        record(local("2026-10-25T23:30:00"), "heat", 200),  # winter time (UTC+1): the same local day, 25 h long
        record(local("2026-10-26T00:10:00"), "spin", 7),
        record(local("2026-11-01T00:00:00"), "heat", 50, cost=16),  # the first second of the month
        record(local("2026-11-10T08:00:00"), "heat", 30, cost=10),  # today
        record(local("2026-11-10T09:00:00"), "spin", 5, cost=2),
    ]
    with Ledger.open(tmp_path / "ledger.db", gateway_id="gw", key=key) as ledger:
        ledger.read(lambda conn: conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall())  # as the daemon's
        ledger.append([usage_draft(r, "urn:koto:gw:gw:washer") for r in recs])
        with pytest.raises(sqlite3.OperationalError, match="locked"):  # a second connection cannot read it
            sqlite3.connect(tmp_path / "ledger.db", timeout=0).execute("SELECT count(*) FROM records").fetchone()
        fig = LedgerReader(ledger, BERLIN).read(local("2026-11-10T12:00:00"))
    assert fig.today[("washer", "heat")]["energy_mwh"] == 30_000 and fig.today[("washer", "spin")]["costs"] == {
        "EUR": 2}
    assert fig.month[("washer", "heat")] == {"energy_mwh": 80_000, "uses": 0, "costs": {"EUR": 26},
                                             "duration_ms": 120_000}
    assert len(fig.days) == CHART_DAYS and fig.days[-1] == "2026-11-10" and fig.days[0] == "2026-10-12"
    heat = dict(zip(fig.days, fig.daily[("washer", "heat")], strict=True))
    assert heat["2026-10-25"] == 300_000  # both records of the 25-hour day, in one bar
    assert heat["2026-11-01"] == 50_000 and heat["2026-10-31"] == 0 and heat["2026-11-10"] == 30_000
    assert dict(zip(fig.days, fig.daily[("washer", "spin")], strict=True))["2026-10-26"] == 7_000
    assert fig.head_seq == len(recs) and fig.acked_through == 0


async def test_a_ledger_that_cannot_be_read_shows_why_and_the_page_still_renders(
        tmp_path: Path, key: PrivateKey) -> None:
    class Clock:
        def now(self) -> object:
            return type("Now", (), {"wall": local("2026-11-10T12:00:00")})()

    ledger = Ledger.open(tmp_path / "ledger.db", gateway_id="gw", key=key)
    ledger.close()  # e.g. the daemon is stopping
    gw = type("Gw", (), {"ledger": ledger, "cfg": type("Cfg", (), {"tz": BERLIN})(), "clock": Clock()})()
    fig = await PageData(gw).figures()  # type: ignore[arg-type]
    assert fig.error.startswith("cannot read the ledger (") and "closed" in fig.error
