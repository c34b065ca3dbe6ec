"""The daemon's start-up: what the cloud sent (a newer profile, a tariff) is taken from the ledger's documents, and
a bad source config stops the start with the file and key named."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import pytest

from drivers.errors import DriverConfigError
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.clock import ManualClock
from metering.ledger import Doc, Ledger
from metering.profile import builtin_profile
from tests.support.ledger_checks import assert_contiguous, ledger_events
from tests.support.paths import REPO

PROFILE_V2 = (REPO / "metering" / "profiles" / "kettle.toml").read_text()


def config(tmp: Path, **source: object) -> dict[str, object]:
    return {"gateway": {"id": "gw-d", "state_dir": str(tmp / "state")},
            "appliance": [{"id": "kettle", "profile": "kettle",
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 1000, **source}}}]}


def test_a_profile_and_a_tariff_the_cloud_sent_are_used_at_the_next_start(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    sd.provision()
    newer = PROFILE_V2.replace('name = "kettle"', 'name = "kettle"\nversion = 9')
    assert "version = 9" in newer
    tariff = {"id": "t", "version": 4, "currency": "EUR", "exponent": 2, "rates": [{"match": "*/*", "per_kwh": "0.5"}],
              "windows": []}
    with Ledger.open(sd.ledger, gateway_id="gw-d", key=sd.private_key()) as ledger:
        ledger.append([], docs=[Doc("profile", "kettle", 9, {"name": "kettle", "version": 9, "toml": newer}),
                                Doc("tariff", "t", 4, tariff)])
    gw = Gateway(parse_config(config(tmp_path), file="koto.toml"), clock=ManualClock(), sync_enabled=False)
    try:
        assert gw.meters["kettle"].profile.version == 9
        assert builtin_profile("kettle").version < 9
        t = gw.pricing.tariff_for("kettle")
        assert t is not None and (t.id, t.version) == ("t", 4)
    finally:
        gw.ledger.close()


def test_a_driver_config_error_stops_the_start_naming_file_and_key(tmp_path: Path) -> None:
    StateDir(tmp_path / "state").provision()
    with pytest.raises(DriverConfigError) as err:
        Gateway(parse_config(config(tmp_path, bounce_ms=40), file="koto.toml"), clock=ManualClock())
    assert err.value.file == "koto.toml" and err.value.key == "bounce_ms"


@contextlib.asynccontextmanager
async def boiling_kettle(tmp_path: Path, **gateway: float) -> AsyncIterator[Gateway]:
    """A running gateway whose kettle boils at 2.2 kW on an S0 meter (20,000 imp/kWh: a pulse every 82 ms)."""
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    cfg = config(tmp_path, imp_per_kwh=20_000)
    cfg["gateway"] = {**cfg["gateway"], "batch_ms": 20, **gateway}  # type: ignore[dict-item]
    cfg["appliance"][0]["interim_s"] = 1  # type: ignore[index]
    clock = SystemClock()
    factory = mock_factory()
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False)
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    kettle = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    try:
        yield gw
    finally:
        kettle.cancel()
        stop.set()
        await run


async def test_pulses_are_checkpointed_within_checkpoint_s_even_when_no_record_is_written(tmp_path: Path) -> None:
    """A crash may lose at most `checkpoint_s` of pulse counting: the count is saved while a boil goes on, long
    before the boil's record is written."""
    async with boiling_kettle(tmp_path, checkpoint_s=0.2) as gw:
        await asyncio.sleep(4.0)  # the boil started in the first second; since then pulses change no function
        source = gw.sources["k"].source
        assert source is not None
        count = source.count  # type: ignore[attr-defined]
        state = gw.ledger.checkpoint("meter:kettle")
        assert state is not None
        assert count > 40
        assert count - int(state["authority"]["last_raw"]) < 8  # 0.2 s checkpoint + a batch: ~3 pulses, not seconds


async def test_a_full_disk_keeps_records_in_memory_and_stores_them_in_order_when_space_returns(
        tmp_path: Path) -> None:
    """SQLite's SQLITE_FULL (here from max_page_count, as from a full SD card): nothing is lost or reordered."""
    async with boiling_kettle(tmp_path, checkpoint_s=0.1) as gw:
        db = gw.ledger._conn  # the test reaches into SQLite only to make it run out of room
        await asyncio.sleep(1.5)
        with gw.ledger._mutex:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count = {pages}")
        for _ in range(100):  # interim records every second: once the last free page is used, commits fail
            if gw.stats.append_failures:
                break
            await asyncio.sleep(0.1)
        assert gw.stats.append_failures > 0
        await asyncio.sleep(2.5)  # and the records made since wait in memory
        head_when_full = gw.ledger.head()[0]
        # Held in memory: waiting for the next batch, or in the batch being (unsuccessfully) appended right now.
        kept = len(gw._pending) + (len(gw._inflight[1]) if gw._inflight else 0)
        assert kept >= 2  # held in memory, in order, with nothing stored
        with gw.ledger._mutex:
            db.execute("PRAGMA max_page_count = 1073741823")
        await asyncio.sleep(1.0)
        assert gw.ledger.head()[0] >= head_when_full + kept
    events = ledger_events(tmp_path / "state" / "ledger.db", "gw-d")
    assert_contiguous(events)
    usage = [e["data"] for e in events if e["type"] == "io.koto.usage.v1"]
    for prev, cur in pairwise(usage):
        assert cur["start_mono_us"] >= prev["start_mono_us"]  # stored in the order they were made


@pytest.mark.slow
async def test_an_enforcement_relay_blocks_an_idle_unentitled_appliance_but_never_cuts_a_running_cycle(
        tmp_path: Path) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock
    from metering.entitlement import Entitlement

    StateDir(tmp_path / "state").provision()
    cfg = config(tmp_path, imp_per_kwh=20_000)
    cfg["gateway"] = {**cfg["gateway"], "batch_ms": 20}  # type: ignore[dict-item]
    cfg["appliance"][0]["relay"] = {"pin": 22, "active_high": True}  # type: ignore[index]  # NC contact
    clock = SystemClock()
    factory = mock_factory()
    coil = factory.pin(22)
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False)
    relay = gw.relays["kettle"]
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    boil: asyncio.Task[None] | None = None

    def grant(version: int, action: str = "grant") -> None:
        gw.pricing.apply_entitlement(Entitlement.from_dict(
            {"id": "e1", "version": version, "action": action, "appliance": "kettle", "function": "*",
             "kind": "uses", "limit": 5}))

    try:
        await asyncio.sleep(1.5)
        assert not relay.powered and coil.state == 1  # idle and no grant: the NC contact opened, no power
        grant(1)
        await asyncio.sleep(1.5)
        assert relay.powered and coil.state == 0
        boil = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
        await asyncio.sleep(5.0)  # a use has started (the kettle profile needs a few seconds above 1 kW)
        assert gw.meters["kettle"].cycle.running
        grant(2, action="revoke")
        await asyncio.sleep(1.5)
        assert relay.powered and relay.kept_running > 0  # revoked mid-boil: the boil is never cut
        relay.allow_start(False, running=False)  # what the next idle tick does: prove a stop restores power
    finally:
        if boil is not None:
            boil.cancel()
        stop.set()
        await run
    assert relay.powered  # a clean stop returns to the safe state (powered) before releasing the pin
