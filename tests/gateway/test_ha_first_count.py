"""The first start with Home Assistant on counts the ledger's energy in the background (gateway/ha_totals.py,
`catch_up`): READY does not wait for that count, the totals Home Assistant then gets are the ledger's energy exactly
(records appended while the count runs are neither missed nor counted twice), and a stop during the count ends it
(between two chunks) and saves nothing. The count reads on the daemon's own ledger connection, which an exclusively
locked ledger proves, chunk by chunk, and a prune between chunks is neither missed nor counted twice. A real ledger,
a real Mosquitto, systemd's notify socket."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway import ha_totals
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.ha_totals import TOTALS_FILE, CountStopped, EnergyTotals
from gateway.sdnotify import Notifier
from gateway.state import StateDir
from metering.ledger import Ledger
from tests.gateway.test_homeassistant_broker import HomeAssistantPeer
from tests.support.broker import Mosquitto
from tests.support.cloudpeer import until
from tests.support.gw_child import append_usage

GW = "gw-ha"


def _state_with_records(tmp: Path, n: int) -> Path:
    """A provisioned state folder whose ledger already holds `n` washer records (and no Home Assistant totals)."""
    sd = StateDir(tmp / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id=GW, key=sd.private_key(), epoch=7) as ledger:
        append_usage(ledger, n)
    return tmp / "state"


def _cfg(tmp: Path, port: int) -> dict[str, Any]:
    s0 = {"driver": "s0", "imp_per_kwh": 20_000, "report_s": 0.2}
    return {"gateway": {"id": GW, "state_dir": str(tmp / "state"), "batch_ms": 20, "hold_s": 0},
            "home_assistant": {"host": "127.0.0.1", "port": port, "interval_s": 1},
            "appliance": [{"id": "kettle", "profile": "kettle", "sources": {"k": {**s0, "pin": 17}}},
                          {"id": "washer", "profile": "kettle", "sources": {"w": {**s0, "pin": 18}}}]}


def _ledger_energy(state: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with Ledger.open(state / "ledger.db", gateway_id=GW, key=None) as ledger:
        for r in ledger.iter_usage():
            out[r.appliance] = out.get(r.appliance, 0) + r.energy_mwh
    return out


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="koto-n")  # short: an AF_UNIX path has at most 107 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"{folder}/n.sock")
    sock.setblocking(False)
    try:
        yield f"{folder}/n.sock", sock
    finally:
        sock.close()
        shutil.rmtree(folder)


async def _ready(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(30):
        while b"READY=1" not in await loop.sock_recv(sock, 4096):
            pass


def _mwh(payload: bytes) -> int:
    return int(json.loads(payload)["energy_kwh"].replace(".", ""))


def _gateway(tmp: Path, port: int, notify: str) -> tuple[Gateway, Any]:
    from drivers.gpio.sim import mock_factory
    from koto.clock import SystemClock

    factory = mock_factory()
    gw = Gateway(parse_config(_cfg(tmp, port), file="koto.toml"), clock=SystemClock(),
                 backends={"pin_factory": factory}, sync_enabled=False, notifier=Notifier(notify))
    assert gw.household.home_assistant is not None
    gw.household.home_assistant.energy_every_s = 0.3
    return gw, factory


async def test_ready_comes_before_the_first_count_and_home_assistant_gets_the_ledgers_energy_exactly(
        tmp_path: Path, notify_socket: tuple[str, socket.socket]) -> None:
    from drivers.gpio.sim import run_pulse_train
    from koto.clock import SystemClock

    state = _state_with_records(tmp_path, 600)
    path, sock = notify_socket
    with Mosquitto(tmp_path / "mqtt") as broker:
        async with HomeAssistantPeer(broker.url, "ha") as ha:
            gw, factory = _gateway(tmp_path, broker.port, path)
            link = gw.household.home_assistant
            assert link is not None and link.first_totals is not None  # no totals file: a count to make
            head_at_start = gw.ledger.head()[0]
            count, gate, counted = link.first_totals, threading.Event(), threading.Event()

            def held_count(stop: threading.Event) -> Mapping[str, int]:  # the real count, made to wait for `gate`
                gate.wait()
                try:
                    return count(stop)
                finally:
                    counted.set()

            link.first_totals = held_count
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            watts = {"now": 2_200_000}
            pulses = asyncio.create_task(run_pulse_train(factory.pin(17), SystemClock(), lambda: watts["now"],
                                                         20_000, step_s=0.02))
            try:
                await _ready(sock)
                assert not counted.is_set()  # READY did not wait for the count
                await asyncio.sleep(1.2)  # the kettle boils while the count waits: records past its range
                watts["now"] = 0
                await until(lambda: gw.ledger.energy_from(head_at_start + 1).get("kettle", 0) > 0, within=30)
                await until(lambda: link.connected, within=30)
                assert not ha.payloads("/state")  # no energy is published before the totals are known
                gate.set()
                await until(lambda: bool(ha.payloads("/washer/state") and ha.payloads("/kettle/state")), within=30)
                await asyncio.sleep(1.0)  # a few refreshes more
            finally:
                gate.set()
                pulses.cancel()
                stop.set()
                await run
    metered = _ledger_energy(state)
    for app in ("washer", "kettle"):
        energies = [_mwh(p) for p in ha.payloads(f"/{app}/state")]
        assert all(b >= a for a, b in itertools.pairwise(energies)), (app, energies)  # never down
        assert energies[-1] == metered[app] > 0, app  # each record once: the count's range, then the refreshes
    assert _mwh(ha.payloads("/washer/state")[0]) == metered["washer"]  # the first state already has the count
    saved = json.loads((state / TOTALS_FILE).read_text())
    assert saved["mwh"] == metered  # the clean stop saved the base through the last record


async def test_a_stop_during_the_first_count_ends_it_saves_nothing_and_the_next_start_counts_again(
        tmp_path: Path, notify_socket: tuple[str, socket.socket]) -> None:
    state = _state_with_records(tmp_path, 300)
    path, sock = notify_socket
    with Mosquitto(tmp_path / "mqtt") as broker:
        async with HomeAssistantPeer(broker.url, "ha") as ha:
            gw, _ = _gateway(tmp_path, broker.port, path)
            link = gw.household.home_assistant
            assert link is not None and link.first_totals is not None
            count, running, told = link.first_totals, threading.Event(), threading.Event()

            def endless_count(stop: threading.Event) -> Mapping[str, int]:  # runs until the stop, then the real one
                running.set()
                stop.wait()
                told.set()
                return count(stop)  # raises CountStopped: `stop` is set

            link.first_totals = endless_count
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            await _ready(sock)
            await until(running.is_set, within=30)
            await until(lambda: link.connected, within=30)
            stop.set()
            await asyncio.wait_for(run, 30)  # returns: the stop did not wait for the count
            assert told.is_set()  # the count was told to stop
            assert not ha.payloads("/state")  # nothing published: the totals were never known
            assert ha.payloads("/availability")[-1] == b"offline"  # the stop was clean
            assert not (state / TOTALS_FILE).exists()  # no base saved from a partial count

            gw, _ = _gateway(tmp_path, broker.port, path)  # the next start counts again, to the end
            assert gw.household.home_assistant is not None and gw.household.home_assistant.first_totals
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            try:
                await until(lambda: bool(ha.payloads("/washer/state")), within=30)
            finally:
                stop.set()
                await run
    assert _mwh(ha.payloads("/washer/state")[-1]) == _ledger_energy(state)["washer"] > 0


class StopOnSecondLook(threading.Event):
    """A stop flag that is set the second time it is looked at: before the first chunk, then between chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        if self.looks == 2:
            self.set()
        return super().is_set()


def _chunked_exclusive_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Ledger]:
    """1,200 records counted in chunks of 100, and the daemon's ledger as it opens it (`exclusive`): any second
    connection, even in this process, finds the file locked. (state folder, ledger path, the writer)"""
    state = _state_with_records(tmp_path, 1200)
    db = state / "ledger.db"
    monkeypatch.setattr(ha_totals, "CHUNK_ROWS", 100)
    ledger = Ledger.open(db, gateway_id=GW, key=StateDir(state).private_key(), exclusive=True)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        second = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0)  # no busy wait: locked
        second.execute("SELECT count(*) FROM records").fetchone()
    return state, db, ledger


def test_the_count_reads_in_chunks_on_the_daemons_own_connection_and_stops_between_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, db, ledger = _chunked_exclusive_writer(tmp_path, monkeypatch)
    try:
        head = ledger.head()[0]
        total = sum(r.energy_mwh for r in ledger.iter_usage())
        tail = ledger.energy_from(701)["washer"]
        assert ledger.read(ha_totals.count_range(db, 1, 700))[1] == {"washer": total - tail}  # the range is the range

        totals = EnergyTotals(state)
        totals.start(ledger)
        assert totals.pending
        with pytest.raises(CountStopped):
            totals.catch_up(StopOnSecondLook())  # one chunk read, then the stop
        assert totals.pending and totals.published == {} and not (state / TOTALS_FILE).exists()
        reads = []
        real_read = ledger.read
        monkeypatch.setattr(ledger, "read", lambda fn: reads.append(1) or real_read(fn))
        assert totals.catch_up(threading.Event()) == {"washer": total} and not totals.pending
        assert len(reads) == -(-head // 100)  # one read per chunk of 100, on the exclusive writer's connection
        assert json.loads((state / TOTALS_FILE).read_text())["through_seq"] == head
    finally:
        ledger.close()


class PruneOnLook(threading.Event):
    """A stop flag that is never set but prunes the ledger when looked at for the `at`-th time (between chunks)."""

    def __init__(self, ledger: Ledger, at: int, *, local_only: bool) -> None:
        super().__init__()
        self.ledger, self.at, self.local_only, self.looks, self.deleted = ledger, at, local_only, 0, 0

    def is_set(self) -> bool:
        self.looks += 1
        if self.looks == self.at:
            self.deleted = self.ledger.prune(0, 4e9, max_rows=self.n, local_only=self.local_only)
        return super().is_set()

    n = 0


@pytest.mark.parametrize("local_only", [True, False])
@pytest.mark.parametrize(("at", "rows", "restarts"), [(3, 150, False), (3, 450, True), (2, 1199, True)])
def test_a_prune_between_chunks_is_neither_missed_nor_counted_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, local_only: bool, at: int,
        rows: int, restarts: bool) -> None:
    """Chunks of 100; before the `at`-th chunk a prune deletes the first `rows` records: behind the count (only
    counted ones) or ahead of it (some not counted yet: the count starts again from the anchor). A local-only
    gateway's pruned records are in its pruned totals, so its Home Assistant total is the ledger's whole energy; a
    gateway with a cloud loses its pruned records, so its total is then what the ledger holds (what a first start
    now would count)."""
    state, _db, ledger = _chunked_exclusive_writer(tmp_path, monkeypatch)
    try:
        head = ledger.head()[0]
        before = sum(r.energy_mwh for r in ledger.iter_usage())
        if not local_only:
            ledger.mark_acked(ledger.epoch, head, ledger.head()[1])
        totals = EnergyTotals(state)
        totals.start(ledger)
        stop = PruneOnLook(ledger, at, local_only=local_only)
        stop.n = rows
        caplog.set_level("INFO", "koto.homeassistant")
        got = totals.catch_up(stop)["washer"]
        assert stop.deleted == rows and ledger.anchor()[0] == rows + 1
        after = sum(r.energy_mwh for r in ledger.iter_usage())
        if local_only:
            assert got == before  # every record once: counted, or in the pruned totals
        elif restarts:
            assert got == after < before  # the ledger's energy as it is now
        else:
            assert got == before  # the prune took counted records only: nothing lost
        assert (f"counting again from seq {rows + 1}" in caplog.text) == restarts
        assert json.loads((state / TOTALS_FILE).read_text())["mwh"]["washer"] == got
    finally:
        ledger.close()


def test_a_prune_ahead_of_a_count_from_a_saved_base_is_said_and_the_rest_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A saved base far behind the head (RECENT_ROWS made 10): its pruned records cannot be told apart in the pruned
    totals, so records pruned before they were counted are said and left out; every other one counts once."""
    monkeypatch.setattr(ha_totals, "RECENT_ROWS", 10)
    state, db, ledger = _chunked_exclusive_writer(tmp_path, monkeypatch)
    (state / TOTALS_FILE).write_text(json.dumps({"epoch": 7, "through_seq": 0, "mwh": {"washer": 5}}))
    try:
        head = ledger.head()[0]
        ledger.mark_acked(ledger.epoch, head, ledger.head()[1])
        kept = [ledger.read(ha_totals.count_range(db, a, b))[1] for a, b in ((1, 200), (451, head))]
        totals = EnergyTotals(state)
        totals.start(ledger)
        assert totals.pending
        stop = PruneOnLook(ledger, 3, local_only=False)
        stop.n = 450
        got = totals.catch_up(stop)["washer"]
        assert stop.deleted == 450
        assert got == 5 + sum(k["washer"] for k in kept if k)  # 1..200 counted, 201..450 gone, 451.. counted
        assert "records 201 to 450 were pruned before they were counted" in caplog.text
    finally:
        ledger.close()


def test_a_saved_base_whose_next_records_were_pruned_while_home_assistant_was_off_says_so_at_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A base close behind the head (the quick path's range) whose next records left the ledger before this start
    (Home Assistant was off for longer than `retain_days`): the start does not add the rest silently, as if they
    had been counted; the count says which records the totals leave out and counts every other one once."""
    state = _state_with_records(tmp_path, 300)
    db = state / "ledger.db"
    (state / TOTALS_FILE).write_text(json.dumps({"epoch": 7, "through_seq": 100, "mwh": {"washer": 5}}))
    with Ledger.open(db, gateway_id=GW, key=StateDir(state).private_key(), exclusive=True) as ledger:
        head = ledger.head()[0]
        ledger.mark_acked(ledger.epoch, head, ledger.head()[1])
        assert ledger.prune(0, 4e9, max_rows=150, local_only=False) == 150
        kept = ledger.energy_from(151)["washer"]
        totals = EnergyTotals(state)
        caplog.set_level("INFO", "koto.homeassistant")
        assert totals.start(ledger) == {} and totals.pending
        assert totals.catch_up(threading.Event()) == {"washer": 5 + kept}
    assert "records 101 to 150 were pruned before they were counted" in caplog.text
