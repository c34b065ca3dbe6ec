"""The reference cloud side on a three-node RabbitMQ cluster, under faults: every record exactly once, every gateway
acked through its head.

Real peers throughout: three rabbitmq-server nodes joined into one cluster with the MQTT plugin
(tests/support/rabbit.py, deploy/rabbitmq/rabbitmq.conf), a PostgreSQL server, two `koto-cloud serve-amqp` child
processes, and simulated gateways that sign and chain real records and follow the contract's resend rules
(tests/support/fleet.py), each on its own MQTT 3.1.1 connection and spread over the three nodes. While they publish,
one broker node is killed with SIGKILL and started again, and then one receiver is killed with SIGKILL. The
recovery times are printed (run with -s to see them); they are measurements, not assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud.store import PostgresStore
from cloud.verify import verify_chain
from koto.signing import load_public_key
from tests.support.cloudpeer import until
from tests.support.fleet import FleetLink, SimGateway
from tests.support.postgres import PostgresServer
from tests.support.rabbit import RabbitCluster, RabbitNode, rabbit_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rabbit_available(), reason="RabbitMQ is not installed (apt-get install rabbitmq-server)"),
]

KOTO_CLOUD = [sys.executable, "-c", "import sys; from cloud.cli import main; sys.exit(main())"]
GATEWAYS = int(os.environ.get("KOTO_CHAOS_GATEWAYS", "4"))
RECORDS = int(os.environ.get("KOTO_CHAOS_RECORDS", "240"))
SHARDS = 4


def serve_amqp(rc: RabbitCluster, dsn: str, instance: int, instances: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `koto-cloud serve-amqp` and return once it says it is consuming."""
    args = [*KOTO_CLOUD, "serve-amqp", "--db", dsn, "--shards", str(SHARDS), "--instance", str(instance),
            "--instances", str(instances)]
    for url in rc.amqp_urls:
        args += ["--amqp", url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log.open("ab"))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert b"ready" in line, f"koto-cloud serve-amqp did not start: {line!r}; see {log}"
    return proc


def queue_depths(node: RabbitNode) -> dict[str, tuple[int, int]]:
    """Per koto queue: (messages ready, messages delivered and not yet acked)."""
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
    depths = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("koto."):
            depths[parts[0]] = (int(parts[1]), int(parts[2]))
    return depths


async def produce(gateways: list[SimGateway], per_tick: int, tick_s: float) -> None:
    """Each gateway commits `per_tick` records every `tick_s`, until all are made."""
    while any(g.made < g.total for g in gateways):
        for g in gateways:
            g.make(per_tick)
        await asyncio.sleep(tick_s)


def test_every_record_exactly_once_and_acked_through_a_broker_node_kill_and_a_receiver_kill(tmp_path, rabbit):
    gateways = [SimGateway.new(f"gw-{i:02d}", RECORDS) for i in range(GATEWAYS)]
    rc = rabbit
    with PostgresServer() as pg:
        with PostgresStore(pg.dsn) as store:
            for g in gateways:
                store.register(g.gw, g.factory.public_pem)
        receivers = [serve_amqp(rc, pg.dsn, i, 2, tmp_path / f"rx{i}.log") for i in range(2)]
        try:
            times = asyncio.run(chaos(rc, receivers, gateways))
        finally:
            for p in receivers:
                if p.poll() is None:
                    p.kill()
                p.wait()
                assert p.stdout is not None
                p.stdout.close()
        print("\nchaos recovery (s): " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))

        for g in gateways:
            assert g.acked == g.total and g.mismatches == 0, g.gw
        with PostgresStore(pg.dsn) as store:
            assert store.count() == GATEWAYS * RECORDS
            for g in gateways:
                assert store.stored_seqs(g.gw, 1) == list(range(1, RECORDS + 1))
                n, problems = verify_chain(store.bodies(g.gw), load_public_key(g.factory.public_pem))
                assert (n, problems) == (RECORDS, [])
            assert store.alarms() == []
        # Nothing left behind in the broker: every delivery was acked after its commit.
        node = rc.running[0]
        deadline = time.monotonic() + 30
        while (depths := queue_depths(node)) and any(r or u for r, u in depths.values()):
            assert time.monotonic() < deadline, depths
            time.sleep(0.5)
        assert set(depths) >= {f"koto.usage.{i}" for i in range(SHARDS)}


def progressed(gateways: list[SimGateway], before: dict[str, int]) -> bool:
    """Every gateway has been acked further since `before`, or is acked through its last record."""
    return all(g.done or g.acked > before[g.gw] for g in gateways)


async def chaos(rc: RabbitCluster, receivers: list[subprocess.Popen[bytes]],
                gateways: list[SimGateway]) -> dict[str, float]:
    urls = [n.mqtt_url for n in rc.nodes]
    links = [FleetLink(urls[i % 3:] + urls[:i % 3], [g], client_id=g.gw, window=50, ack_timeout_s=3.0)
             for i, g in enumerate(gateways)]
    tasks = [asyncio.create_task(link.run()) for link in links]
    times: dict[str, float] = {}
    try:
        await until(lambda: all(link.connected.is_set() for link in links), 30)
        producer = asyncio.create_task(produce(gateways, per_tick=3, tick_s=0.1))  # ~30 records/s a gateway
        await until(lambda: sum(g.acked for g in gateways) >= GATEWAYS * RECORDS // 5, 60)

        # 1. A broker node dies (the second: one receiver and some gateways are connected to it), then returns.
        on_node = [link for link in links if link.connects == 1 and link.urls[0] == urls[1]]
        before = {g.gw: g.acked for g in gateways}
        t0 = time.monotonic()
        rc.kill(1)
        await until(lambda: all(link.connects >= 2 for link in on_node), 60)
        times["gateways reconnected after node kill"] = time.monotonic() - t0
        await until(lambda: progressed(gateways, before), 60)
        times["every gateway acked again after node kill"] = time.monotonic() - t0
        restart = asyncio.create_task(asyncio.to_thread(rc.start, 1))

        # 2. Meanwhile a receiver dies with deliveries in flight; the other takes its shards over.
        await until(lambda: sum(g.acked for g in gateways) >= GATEWAYS * RECORDS // 2, 60)
        assert not any(g.done for g in gateways), "the receiver must die while every gateway still publishes"
        before = {g.gw: g.acked for g in gateways}
        t0 = time.monotonic()
        receivers[0].send_signal(signal.SIGKILL)
        receivers[0].wait()
        await until(lambda: progressed(gateways, before), 60)
        times["every gateway acked again after receiver kill"] = time.monotonic() - t0

        await producer
        await until(lambda: all(g.done for g in gateways), 120)
        times["all acked after receiver kill"] = time.monotonic() - t0
        times["node restart"] = await restart
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return times
