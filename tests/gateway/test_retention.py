"""Bounded storage: a compressed year of records through the daemon's housekeeper keeps the ledger file (+ WAL)
under a stated bound, never prunes an unacked record, and leaves a chain `verify` proves from its anchor; a
local-only gateway keeps `retain_days` of records and the running totals of everything it pruned.

The year: 48 usage records a day (8 appliances, 6 each: functions and cycles; 17,520 in the year), appended
in batches like the daemon's, the clock (a `ManualClock`) moved a day at a time; with a cloud, the cloud acks each
day's records, except those of the last few days before an outage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.housekeeping import Housekeeper
from koto.clock import ManualClock
from koto.signing import PrivateKey, generate_key
from metering.ledger import Ledger
from metering.records import RecordKind
from tests.support.drafts import usage

DAY = 86400.0
PER_DAY = 48
RETAIN_DAYS = 30
BOUND_BYTES = 8 * 1024 * 1024  # retain_days x 48 records of ~1 KiB (~1.5 MB) + a WAL of at most 4 MiB + slack


def day_of_records(day: int, clock: ManualClock) -> list:  # type: ignore[type-arg]
    start = clock.now().wall
    drafts = []
    for i in range(PER_DAY):
        kind = RecordKind.CYCLE if i % 10 == 9 else RecordKind.FUNCTION
        cycle = kind == RecordKind.CYCLE
        drafts.append(usage(day * PER_DAY + i, kind=kind, appliance=f"app{i % 8}", function=("wash", "spin")[i % 2],
                            cycle_id=f"c{day}-{i}" if cycle else "", uses=int(cycle),
                            t_end=start + i * DAY / PER_DAY, energy_mwh=1000 + i))
    return drafts


def size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def run_year(tmp_path: Path, *, local_only: bool, outage_from: int = 10_000) -> tuple[Ledger, Housekeeper, PrivateKey,
                                                                                           list[int], tuple[int, int]]:
    key = generate_key()
    clock = ManualClock(wall=1_800_000_000.0)
    ledger = Ledger.open(tmp_path / "ledger.db", gateway_id="gw-y", key=key)
    hk = Housekeeper(ledger, clock, retain_days=RETAIN_DAYS, local_only=local_only, quiet=lambda: True, step_rows=500)
    sizes = []
    energy = uses = 0
    for day in range(365):
        drafts = day_of_records(day, clock)
        energy += sum(d.data["energy_mwh"] for d in drafts if d.data["kind"] != "cycle")
        uses += sum(d.data["uses"] for d in drafts)
        stored = ledger.append(drafts)  # (one batch a day: the fsyncs of many would only slow the test)
        if not local_only and day < outage_from:  # the cloud acks the day's records
            ledger.mark_acked(ledger.epoch, stored[-1].seq, stored[-1].hash)
        clock.advance(DAY)
        asyncio.run(hk.prune_now())
        sizes.append(size(tmp_path / "ledger.db"))
    return ledger, hk, key, sizes, (energy, uses)


@pytest.mark.slow  # ~5-15 s: a year of daily fsyncs
def test_a_year_with_a_cloud_stays_under_the_bound_never_prunes_unacked_and_verifies_from_its_anchor(
        tmp_path: Path) -> None:
    outage = 365 - RETAIN_DAYS - 20  # the cloud stops acking 50 days before the end of the year
    ledger, hk, key, sizes, _ = run_year(tmp_path, local_only=False, outage_from=outage)
    with ledger:
        assert max(sizes) < BOUND_BYTES
        # flat once retention is reached (until the outage's unacked records pile up), not growing with the year
        assert sizes[outage - 1] < sizes[RETAIN_DAYS + 5] * 1.25
        first, _ = ledger.anchor()
        head, _ = ledger.head()
        assert first == ledger.acked_through() + 1  # pruned up to the cloud's ack and not one record further
        assert ledger.unacked_count() == (365 - outage) * PER_DAY
        assert hk.pruned == first - 1 > 250 * PER_DAY  # most of the year left, in steps of 500
        report = ledger.verify(key.public_key(), workers=1)
        assert report.ok and report.first_seq == first and report.last_seq == head


@pytest.mark.slow
def test_a_local_only_year_keeps_retain_days_of_records_and_the_totals_of_all(tmp_path: Path) -> None:
    ledger, hk, key, sizes, (energy, uses) = run_year(tmp_path, local_only=True)
    with ledger:
        assert max(sizes) < BOUND_BYTES
        assert sizes[-1] < sizes[RETAIN_DAYS + 5] * 1.25
        assert ledger.acked_through() == 0 and hk.pruned > 300 * PER_DAY
        kept = ledger.usage_summary()
        pruned = ledger.pruned_totals()
        assert sum(t.energy_mwh for t in pruned) + sum(r.energy_mwh for r in kept) == energy  # nothing unaccounted
        assert sum(t.uses for t in pruned) + sum(r.uses for r in kept) == uses
        assert sum(t.records for t in pruned) == hk.pruned
        assert {t.appliance for t in pruned} == {f"app{i}" for i in range(8)}
        assert ledger.verify(key.public_key(), workers=1).ok


async def test_the_running_daemon_prunes_at_a_quiet_moment_and_folds_a_local_only_ledger(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`koto run`'s own housekeeper (wired in the daemon, on its clock) prunes old records of a local-only gateway."""
    import time

    from drivers.gpio.sim import mock_factory
    from gateway.config import parse_config
    from gateway.daemon import Gateway
    from gateway.state import StateDir
    from koto.clock import ScaledClock

    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-h", key=sd.private_key()) as ledger:
        old = time.time() - 10 * DAY
        ledger.append([usage(i, t_end=old + i) for i in range(700)])  # more than one step of 500
    cfg = parse_config({"gateway": {"id": "gw-h", "state_dir": str(sd.root), "retain_days": 1},
                        "appliance": [{"id": "kettle", "profile": "kettle",
                                       "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 1000}}}]},
                       file="koto.toml")
    gw = Gateway(cfg, clock=ScaledClock(600.0), backends={"pin_factory": mock_factory()}, sync_enabled=False)
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    for _ in range(100):  # the first look is a minute of the daemon's clock (0.1 s here) after the start
        await asyncio.sleep(0.05)
        if gw.ledger.anchor()[0] > 700:
            break
    stop.set()
    await run
    with Ledger.open(sd.ledger, gateway_id="gw-h", key=None) as ledger:
        assert ledger.anchor()[0] == 701  # all 700 old records, in two steps; the gateway's own start record kept
        assert sum(t.records for t in ledger.pruned_totals()) == 700
        assert ledger.verify(sd.public_key(), workers=1).ok
    from gateway.cli import main as koto

    capsys.readouterr()
    assert koto(["usage", "--state-dir", str(sd.root), "--mwh"]) == 0
    out = capsys.readouterr().out
    assert "before seq 701: removed by retention" in out
    assert "700000" in out  # the 700 pruned records' energy (1000 mWh each), exact
