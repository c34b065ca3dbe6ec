"""Cloud acks written with the next records, not in commits of their own (gateway/ack_hold.py, docs/ledger.md).

Real peers throughout: a Mosquitto on a free port, the reference receiver on its SQLite store, real ledger files
read from a second connection the way another process reads them (`PRAGMA data_version` changes exactly when
another connection committed), and, for the crash, `koto run` in a child process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import Store, open_store
from gateway.ack_hold import ACK_HOLD_S, AckHold
from gateway.cli import main as koto
from gateway.config import SyncConfig, parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from gateway.sync import Sync
from koto.clock import ManualClock
from koto.signing import generate_key, public_pem
from metering.ledger import Ledger
from metering.ledger.lease import reader_lease
from tests.support.broker import Mosquitto
from tests.support.drafts import batch
from tests.support.paths import REPO
from tests.support.slow import scaled

GW = "gw-acks"


async def until(cond: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    for _ in range(int(scaled(limit_s) / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class FileView:
    """The ledger file as another process sees it: with a reader lease, as `koto usage` reads it (the daemon lends
    its ledger within a second and keeps it lent while the lease is held, that is for the rest of the test)."""

    def __init__(self, db: Path) -> None:
        self.lease = reader_lease(db)
        self.conn = sqlite3.connect(db, timeout=10, check_same_thread=False)  # its first read may be in a thread

    def version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def kv(self, key: str) -> int:
        return int(self.conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()[0])

    def acked(self) -> int:
        return self.kv("acked_through")

    def head(self) -> int:
        return self.kv("head_seq")


@asynccontextmanager
async def cloud(tmp: Path, pubkey_pem: str | None) -> AsyncIterator[tuple[Mosquitto, Store]]:
    """A Mosquitto and the reference receiver (in this process, on SQLite), the gateway's key registered (if known)."""
    with Mosquitto(tmp / "broker") as broker:
        store = open_store(str(tmp / "cloud.db"))
        if pubkey_pem is not None:
            store.register(GW, pubkey_pem)
        try:
            async with Receiver(store, ReceiverConfig(broker=broker.url)):
                yield broker, store
        finally:
            store.close()


async def test_an_ack_rides_with_the_next_records_commit_or_is_written_alone_after_ack_hold_s(tmp_path: Path) -> None:
    key = generate_key()
    ledger = Ledger.open(tmp_path / "ledger.db", gateway_id=GW, key=key)
    clock = ManualClock()
    hold = AckHold(ledger, clock)
    async with cloud(tmp_path, public_pem(key)) as (broker, store), \
            Sync(SyncConfig(gateway_id=GW, broker=broker.url), ledger, clock=clock, acks=hold) as sync:
        ledger.append(batch(0, 5))
        view = FileView(ledger.path)
        v0 = view.version()
        sync.notify()
        await asyncio.wait_for(sync.wait_acked(5), scaled(20))
        assert sync.health.acks_advanced >= 1
        assert view.version() == v0 and view.acked() == 0  # the ack took no commit of its own
        assert ledger.unacked_count() == 0  # but counts at once

        ledger.append(batch(5, 1))
        assert view.acked() == 5  # the next records commit carried it

        sync.notify()
        await asyncio.wait_for(sync.wait_acked(6), scaled(20))
        v1 = view.version()
        clock.advance(ACK_HOLD_S - 1)
        assert hold.tick() is False and view.version() == v1 and view.acked() == 5
        clock.advance(1)  # no records commit within ACK_HOLD_S: written alone
        assert hold.tick() is True and view.acked() == 6 and hold.written_alone == 1
        assert hold.tick() is False
        assert store.stored_seqs(GW, ledger.epoch) == list(range(1, 7))
    ledger.close()


def gateway_config(tmp: Path, broker: Mosquitto) -> dict[str, Any]:
    """A gateway with a cloud and no appliance: after its start record it commits nothing until it stops (an idle
    meter would, once the test moves the clock an hour: its standby record)."""
    return {"gateway": {"id": GW, "state_dir": str(tmp / "state"), "batch_ms": 20, "hold_s": 0, "hold_use_s": 0},
            "cloud": {"broker": broker.url}, "appliance": []}


async def test_the_daemon_writes_a_held_ack_within_ack_hold_s_and_at_a_clean_stop(tmp_path: Path) -> None:
    """The daemon's clock is injected (a ManualClock moved by the test); its ticker writes an ack that had no
    records commit to ride with once ACK_HOLD_S of that clock passed, and a clean stop writes the last one."""
    state = StateDir(tmp_path / "state")
    state.provision()
    async with cloud(tmp_path, state.public_key_path.read_text()) as (broker, store):
        clock = ManualClock()
        gw = Gateway(parse_config(gateway_config(tmp_path, broker), file="koto.toml"), clock=clock)
        assert gw.acks is not None
        view = FileView(state.ledger)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        try:
            # The first read waits (off this loop) for the daemon's lending task to lend the ledger; the view's
            # lease keeps it lent, so every later read is an ordinary WAL read.
            await asyncio.to_thread(view.head)
            await until(lambda: gw.ledger.head()[0] >= 1 and gw.ledger.acked_through() == gw.ledger.head()[0],
                        "the start record acked by the cloud")
            head = gw.ledger.head()[0]
            assert gw.ledger.held_ack() == head and view.acked() < head  # held, not written
            clock.advance(ACK_HOLD_S / 2)
            await asyncio.sleep(1.5)  # the ticker ran at least once
            assert view.acked() < head and gw.acks.written_alone == 0
            clock.advance(ACK_HOLD_S / 2)
            await until(lambda: view.acked() >= head, "the held ack written by the ticker", 10)
            assert gw.acks.written_alone == 1
        finally:
            stop.set()
            await run  # a clean stop: the stop record, its ack from the cloud, written at close
        head = view.head()
        assert head > 1 and view.acked() == head
        assert store.stored_seqs(GW, gw.ledger.epoch) == list(range(1, head + 1))


def child_config(tmp: Path, broker: Mosquitto) -> Path:
    """`koto run` with a cloud and no appliance: its start record is committed at once and then nothing until it
    stops, so an ack of it stays held (a meter's first reading would commit, and carry the ack, at a moment the test
    does not control)."""
    cfg = tmp / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "{GW}"
state_dir = "{tmp / 'state'}"
batch_ms = 50
hold_s = 0  # records are committed at once (the start record, the stop record)
hold_use_s = 0

[cloud]
broker = "{broker.url}"
""")
    return cfg


def start_child(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "-v", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)


async def exited(proc: subprocess.Popen[bytes], limit_s: float = 20.0) -> int:
    """The child's exit code, waited for without blocking the loop (the receiver runs on it, acking the last
    records the child sends while it stops)."""
    await until(lambda: proc.poll() is not None, "the gateway to exit", limit_s)
    return proc.returncode


class UsageWatch:
    """A plain subscriber to the gateway's usage topic: how many times each seq was published."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = aiomqtt.Client(broker.host, broker.port, identifier="usage-watch")
        self.seen: Counter[int] = Counter()

    async def run(self) -> None:
        async with self.client:
            await self.client.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
            async for m in self.client.messages:
                assert isinstance(m.payload, bytes)
                self.seen[int(json.loads(m.payload)["data"]["seq"])] += 1


async def test_a_kill_after_an_ack_was_held_resends_and_the_cloud_stores_each_record_once(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    state = StateDir(tmp_path / "state")
    async with cloud(tmp_path, None) as (broker, store):
        cfg = child_config(tmp_path, broker)
        assert koto(["provision", "--config", str(cfg)]) == 0
        store.register(GW, state.public_key_path.read_text())
        watch = UsageWatch(broker)
        watching = asyncio.create_task(watch.run())
        await asyncio.sleep(0.5)  # subscribed
        proc = start_child(cfg, log)
        try:
            await until(lambda: "cloud acked through seq" in log.read_text(errors="replace"),
                        "the first cloud ack, received by the gateway", 60)
            view = FileView(state.ledger)
            epoch, head, written = view.kv("epoch"), view.head(), view.acked()
            assert head >= 1 and store.stored_seqs(GW, epoch) == list(range(1, head + 1))  # the cloud has them
            assert written < head, "the ack was written already: nothing held to lose"
            proc.send_signal(signal.SIGKILL)
            assert await exited(proc) == -signal.SIGKILL
            assert view.acked() == written  # the held ack died with the process
            assert [watch.seen[s] for s in range(written + 1, head + 1)] == [1] * (head - written)

            proc = start_child(cfg, log)  # it starts again from the written ack
            await until(lambda: all(watch.seen[s] == 2 for s in range(written + 1, head + 1)),
                        "the records acked before the kill, sent again", 60)
            await until(lambda: view.head() > head and len(store.stored_seqs(GW, epoch)) == view.head(),
                        "the new start record at the cloud", 30)
            proc.send_signal(signal.SIGTERM)  # a clean stop: the stop record, its ack, written at close
            assert await exited(proc) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        final = view.head()
        assert view.acked() == final  # the ack written again
        assert store.stored_seqs(GW, epoch) == list(range(1, final + 1))  # each seq exactly once at the cloud
        assert store.alarms(GW) == []
