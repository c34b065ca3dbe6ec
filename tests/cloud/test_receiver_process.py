"""`koto-cloud serve` as a child process: killed between commit and ack, and two of them on one shared subscription."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cloud.store import SqliteStore
from cloud.verify import verify_chain
from koto.signing import load_public_key
from tests.support.broker import Mosquitto
from tests.support.cloudpeer import GatewayPeer, until
from tests.support.events import EventFactory

KOTO_CLOUD = [sys.executable, "-c", "import sys; from cloud.cli import main; sys.exit(main())"]


def serve(broker: Mosquitto, db: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `koto-cloud serve` and return once it says it is subscribed."""
    proc = subprocess.Popen(
        [*KOTO_CLOUD, "serve", "--broker", broker.url, "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert b"ready" in line, f"koto-cloud serve did not start: {line!r}"
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


async def test_a_receiver_killed_between_commit_and_ack_acks_the_resend_after_restart(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(50)
    db = tmp_path / "cloud.db"
    with SqliteStore(db) as s:
        s.register("gw-1", f.public_pem)
    proc = serve(broker, db, env={"KOTO_CLOUD_FAILPOINT": "kill_after_commit"})
    try:
        async with GatewayPeer(broker, "gw-1") as gw:
            await gw.publish(bodies)
            await until(lambda: proc.poll() is not None)
            assert proc.returncode == -signal.SIGKILL
            with SqliteStore(db) as s:
                committed = s.count("gw-1")
            assert committed > 0 and gw.acks == []  # durable, but the ack never left
            proc = serve(broker, db)
            await gw.publish(bodies)  # the gateway resends everything unacked, identical bytes
            ack = await gw.wait_ack(50)
    finally:
        stop(proc)
    assert ack["acked_through"] == 50 and ack["head_hash"] == f.head
    with SqliteStore(db) as s:
        assert s.stored_seqs("gw-1", 1) == list(range(1, 51))
        assert verify_chain(s.bodies("gw-1"), load_public_key(f.public_pem)) == (50, [])


async def test_two_receiver_processes_on_one_shared_subscription_store_every_record_once(broker, tmp_path):
    gws = [EventFactory(f"gw-{i}") for i in range(1, 4)]
    db = tmp_path / "cloud.db"
    with SqliteStore(db) as s:
        for f in gws:
            s.register(f.gateway, f.public_pem)
    procs = [serve(broker, db), serve(broker, db)]
    try:
        peers = [GatewayPeer(broker, f.gateway) for f in gws]
        chains = [f.chain(400) for f in gws]
        for p in peers:
            await p.__aenter__()
        try:
            for p, bodies in zip(peers, chains, strict=True):
                await p.publish(bodies + bodies[:100])  # with resends
            for p, f in zip(peers, gws, strict=True):
                ack = await p.wait_ack(400, within=30)
                assert ack["head_hash"] == f.head
        finally:
            for p in peers:
                await p.__aexit__(None, None, None)
    finally:
        for proc in procs:
            stop(proc)
    with SqliteStore(db) as s:
        for f in gws:
            assert s.stored_seqs(f.gateway, 1) == list(range(1, 401))
        assert s.count() == 1200
