"""A stop while the disk is full (SQLite's SQLITE_FULL, here from `max_page_count`, as the full-disk test in
test_daemon.py does) says in one error line how many records and how much energy per appliance it could not store;
the next start reconciles a register meter's energy from the register, so the ledger still conserves it exactly
(issue 10, item 5)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.held import summarize
from gateway.state import StateDir
from koto.clock import SystemClock
from tests.support.cloudpeer import until
from tests.support.ledger_checks import assert_contiguous, conservation, ledger_events


def config(tmp: Path, port: str) -> dict[str, object]:
    return {"gateway": {"id": "gw-full", "state_dir": str(tmp / "state"), "batch_ms": 50, "checkpoint_s": 0.2,
                        "hold_s": 0},
            "appliance": [{"id": "kettle", "profile": "kettle", "interim_s": 1, "max_gap_s": 2,
                           "sources": {"m": {"driver": "modbus", "model": "sdm120", "port": port, "address": 1,
                                             "baud": 9600, "poll_s": 0.05, "timeout_s": 0.3}}}]}


async def run_for(cfg: dict[str, object], seconds: float, *, fill: bool = False, until_seq_above: int = 0) -> Gateway:
    """Run a gateway until its ledger is past `until_seq_above`, then for `seconds`; with `fill`, the disk fills as
    soon as the first usage record is stored (seq 1 is the start's lifecycle record), and the run goes on until the
    records held in memory carry energy (on a loaded machine the first held ones may be a poll's empty interim)."""
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=SystemClock(), sync_enabled=False)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    # A loaded machine can take longer than any fixed sleep to poll, open a function and commit; this test is about
    # what is stored, so it waits for the records (or for the gateway to end), not for the clock.
    seq = max(until_seq_above, 1 if fill else 0)
    await until(lambda: task.done() or gw.ledger.head()[0] > seq, within=60.0)
    if fill:
        db = gw.ledger._conn  # the test reaches into SQLite only to make it run out of room
        with gw.ledger._mutex:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count = {pages}")
        await until(lambda: task.done() or summarize(gw.held_drafts()).energy_mwh.get("kettle", 0) > 0, within=60.0)
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return gw


async def test_a_stop_on_a_full_disk_says_what_it_could_not_store_and_the_register_reconciles_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    StateDir(tmp_path / "state").provision()
    meter = SimMeter("sdm120", 1, power_fn=lambda t: 2000.0)  # a kettle boiling at 2 kW: ~0.56 Wh a second
    async with ModbusSimulator([meter], baud=9600) as bus:
        cfg = config(tmp_path, bus.port)
        with caplog.at_level(logging.ERROR, logger="koto.gateway"):
            first = await run_for(cfg, 2.0, fill=True)
        assert first.stats.append_failures > 0
        lines = [r.getMessage() for r in caplog.records if "could not store" in r.getMessage()]
        stopped = [ln for ln in lines if ln.startswith("ledger: stopping with")]
        assert len(stopped) == 1, lines
        m = re.search(r"stopping with (\d+) records .*: kettle (\d+) mWh \(reconciled from its register at the next "
                      r"start\)", stopped[0])
        assert m is not None, stopped[0]
        held_records, held_mwh = int(m[1]), int(m[2])
        assert held_records >= 2 and held_mwh > 0  # interim records at 2 kW, and the stop's own
        head_after_first = ledger_events(tmp_path / "state" / "ledger.db", "gw-full")[-1]["data"]["seq"]

        # Space again (a new connection has no page limit): the next start, until its lifecycle record and one usage.
        await run_for(cfg, 0.5, until_seq_above=head_after_first + 1)

    events = ledger_events(tmp_path / "state" / "ledger.db", "gw-full")
    assert_contiguous(events)
    total, first_reg, last_reg = conservation(events)["m"]
    assert total == last_reg - first_reg  # every mWh the register counted is in the ledger, the held ones too
    usage = [e["data"] for e in events if e["type"] == "io.koto.usage.v1" and e["data"]["kind"] != "cycle"]
    before = [u for u in usage if u["seq"] <= head_after_first]
    after = [u for u in usage if u["seq"] > head_after_first]
    # The next start's first record takes up the register where the last stored one ended, so the held energy (and
    # what the register counted while the gateway was down) is in the ledger after all.
    assert after[0]["register_start_mwh"] == before[-1]["register_end_mwh"]
    assert sum(u["energy_mwh"] for u in after) >= held_mwh
