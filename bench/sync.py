"""Sync benchmark: backlog drain vs raw QoS 1 publishing, commit-to-ack latency, and drain start after an outage.

    .venv/bin/python -m bench.sync                      # 10,000-record backlog, plain MQTT on loopback
    .venv/bin/python -m bench.sync --tls                # the same over TLS with client certificates
    .venv/bin/python -m bench.sync --outage 120         # also: broker away 120 s, time until the drain restarts
    .venv/bin/python -m bench.sync --receivers 2        # two receivers on the shared subscription
    .venv/bin/python -m bench.sync --peer null          # the gateway side alone (a trusting acker, no receiver)
    .venv/bin/python -m bench.sync --pg postgresql://postgres@127.0.0.1:5432/test   # the receiver on PostgreSQL

What is measured, all against one real Mosquitto and the reference receiver (cloud/, SQLite store) in one run:
1. raw: the same 10,000 stored bodies published with aiomqtt at QoS 1 (256 in flight) until every PUBACK is back.
   Nothing subscribes to that topic, so this is the broker's best case and an upper bound for any sync.
2. drain: Sync publishing the 10,000-record backlog until the receiver has verified, committed and acked them all
   (the cloud ack, not the PUBACK). The ratio drain/raw is printed (target >= 0.5).
3. latency: live records appended one at a time; from the ledger commit to the cloud ack arriving (p50/p99).
4. outage (optional): the broker is stopped for N seconds during a drain; from its restart until the first new
   cloud ack (the drain has started again), target < 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import PostgresStore, SqliteStore, Store, open_store
from gateway.config import SyncConfig
from gateway.mqtt_conn import make_client
from gateway.sync import Sync
from koto.clock import SystemClock
from koto.net import parse_broker_url, tls_context
from koto.signing import public_pem
from metering.ledger import Ledger
from tests.support.broker import Mosquitto
from tests.support.gw_child import append_usage, device_key, open_ledger
from tests.support.pki import TestPKI

GW = "gw-bench"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


async def raw_publish(broker: Mosquitto, bodies: list[bytes], pki: TestPKI | None, in_flight: int = 64) -> float:
    ssl = None
    if pki is not None:
        pair = pki.client("gw-raw")
        ssl = tls_context(pki.ca, pair.cert, pair.key)
    client = make_client(url=parse_broker_url(broker.url), client_id="gw-raw", ssl_context=ssl, persistent=False,
                         max_inflight=in_flight)
    client.pending_calls_threshold = in_flight * 2
    sem = asyncio.Semaphore(in_flight)

    async def one(b: bytes) -> None:
        try:
            await client.publish("koto/v1/gw-raw/up/usage", b, qos=1)
        finally:
            sem.release()

    async with client:
        t0 = time.perf_counter()
        tasks = []
        for b in bodies:
            await sem.acquire()
            tasks.append(asyncio.create_task(one(b)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0


@dataclass
class Figures:
    """What one run measured; `report` prints it."""

    records: int
    body_bytes: int
    raw_s: float
    drain_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the drain
    latency_ms: list[float] = field(default_factory=list)
    reconnect_s: float | None = None
    outage_s: float | None = None
    stored_once: bool = False
    resends: int = 0
    ack_mismatches: int = 0


def open_cloud_store(args: argparse.Namespace, tmp: Path) -> tuple[Store, str]:
    """The receiver's store and the `--db` its processes open: SQLite in `tmp`, or a schema of its own per run in
    the PostgreSQL database `--pg` names (dropped at the end; the receiver finds it through its search_path)."""
    if not args.pg:
        db = str(tmp / "cloud.db")
        return SqliteStore(db), db
    schema = f"koto_bench_{os.getpid()}"
    db = args.pg + ("&" if "?" in args.pg else "?") + f"options=-csearch_path%3D{schema}"
    return PostgresStore(args.pg, schema=schema), db


def start_peers(args: argparse.Namespace, broker: Mosquitto, tmp: Path, db: str,
                rx_kw: dict[str, Any]) -> list[subprocess.Popen[bytes]]:
    """The acking side in processes of its own: `koto-cloud serve` (one per `--receivers`) or the null acker.
    None with `--no-rx-process` (the receiver then runs in this process)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    if args.peer == "null":  # an acker that trusts everything: what the gateway side alone can do
        cmd = [sys.executable, "-m", "bench.sync", "--null-acker", broker.url, str(tmp / "gw" / "ledger.db")]
        return [subprocess.Popen(cmd, env=env)]
    if not args.rx_process:
        return []
    procs = []
    for i in range(args.receivers):  # the receiver as deployed
        cmd = [sys.executable, "-m", "cloud.cli", "serve", "--broker", broker.url, "--db", db,
               "--client-id", f"rx-bench-{i}"]
        for k, v in rx_kw.items():
            cmd += [f"--{k}", str(v)]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


async def measure_drain(sync: Sync, records: int, pids: dict[str, int], fig: Figures) -> None:
    """From the moment the session is up (as the raw side is timed from its connect) until the cloud acked all."""
    while not sync.health.connected:  # noqa: ASYNC110 - a 1 ms poll of a flag Sync sets
        await asyncio.sleep(0.001)
    cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await sync.wait_acked(records)
    fig.drain_s = time.perf_counter() - t0
    fig.cpu = {name: cpu_s(pid) - cpu0[name] for name, pid in pids.items()}


async def measure_latency(sync: Sync, ledger: Ledger, n: int, gap_s: float, fig: Figures) -> None:
    """Live records appended one at a time: from the ledger commit to the cloud ack."""
    for _ in range(n):
        append_usage(ledger, 1)
        t1 = time.perf_counter()
        sync.notify()
        head, _ = ledger.head()
        await sync.wait_acked(head)
        fig.latency_ms.append((time.perf_counter() - t1) * 1000)
        await asyncio.sleep(gap_s)


async def measure_outage(sync: Sync, ledger: Ledger, broker: Mosquitto, away_s: float, fig: Figures) -> None:
    """Stop the broker during a drain, keep metering, start it again: time to reconnect and to the first new ack."""
    append_usage(ledger, 3000, batch=1000)
    sync.notify()
    await asyncio.sleep(0.2)
    broker.stop()
    deadline = time.monotonic() + away_s
    while time.monotonic() < deadline:  # the meter keeps writing while the broker is away
        append_usage(ledger, 10)
        await asyncio.sleep(1.0)
    acked_before, connects_before = ledger.acked_through(), sync.health.connects
    broker.start()
    t2 = time.perf_counter()
    while ledger.acked_through() == acked_before:
        if fig.reconnect_s is None and sync.health.connects > connects_before:
            fig.reconnect_s = time.perf_counter() - t2
        await asyncio.sleep(0.01)
    fig.outage_s = time.perf_counter() - t2
    head, _ = ledger.head()
    await sync.wait_acked(head)


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="koto-bench-sync-"))
    pki = TestPKI(tmp / "pki") if args.tls else None
    broker = Mosquitto(tmp / "broker", pki=pki)
    if args.broker_nodelay:
        broker.conf.write_text(broker.conf.read_text() + "set_tcp_nodelay true\n")
    with broker:
        ledger = open_ledger(tmp / "gw", GW)
        store, db = open_cloud_store(args, tmp)
        store.register(GW, public_pem(device_key(tmp / "gw")))
        append_usage(ledger, args.records, batch=2000)
        bodies = [r.body for r in ledger.iter_records(1, args.records)]
        fig = Figures(args.records, len(bodies[0]), await raw_publish(broker, bodies, pki))

        gw_kw: dict[str, Any] = {}
        rx_kw: dict[str, Any] = {}
        if pki is not None:
            gw_pair, rx_pair = pki.client(GW), pki.client("koto-receiver")
            gw_kw = {"ca": pki.ca, "cert": gw_pair.cert, "key": gw_pair.key}
            rx_kw = {"ca": pki.ca, "cert": rx_pair.cert, "key": rx_pair.key}
        cfg = SyncConfig(gateway_id=GW, broker=broker.url, window=args.window, **gw_kw)
        procs = start_peers(args, broker, tmp, db, rx_kw)
        if procs:
            await asyncio.sleep(2.0)
        rx_ctx: Any = (Receiver(open_store(db), ReceiverConfig(broker=broker.url, client_id="rx-bench", **rx_kw))
                       if not procs else contextlib.nullcontext())
        async with rx_ctx, Sync(cfg, ledger, clock=SystemClock(), version="bench") as sync:
            pids = {"gateway": os.getpid(), "broker": broker.proc.pid if broker.proc else 0,
                    **{f"receiver{i + 1 if len(procs) > 1 else ''}": p.pid for i, p in enumerate(procs)}}
            await measure_drain(sync, args.records, pids, fig)
            await measure_latency(sync, ledger, args.latency_n, args.latency_gap, fig)
            if args.outage:
                await measure_outage(sync, ledger, broker, args.outage, fig)
        for proc in procs:
            proc.terminate()
            proc.wait()
        if args.peer == "null":
            fig.stored_once = ledger.acked_through() == ledger.head()[0]
        else:
            fig.stored_once = store.stored_seqs(GW, ledger.epoch) == list(range(1, ledger.head()[0] + 1))
        fig.resends, fig.ack_mismatches = sync.health.resends, sync.health.ack_mismatches
        report(args, cfg, fig, in_process=not procs)
        ledger.close()
        if isinstance(store, PostgresStore):
            store.drop_schema()
        store.close()


def report(args: argparse.Namespace, cfg: SyncConfig, fig: Figures, *, in_process: bool) -> None:
    mode = "TLS + client certs" if args.tls else "plain TCP"
    mode += ", PostgreSQL store" if args.pg else ", SQLite store"
    mode += {"null": ", peer: null acker (no verify/store)"}.get(args.peer, f", {args.receivers} receiver(s)")
    raw_rate, drain_rate = fig.records / fig.raw_s, fig.records / fig.drain_s
    lat = fig.latency_ms
    print(f"sync bench ({mode}, loopback, window {args.window}, {fig.records} records of ~{fig.body_bytes} B)")
    print(f"  raw aiomqtt QoS1 publish : {raw_rate:8.0f} records/s ({fig.raw_s:.2f} s, PUBACKs only, no subscriber)")
    print(f"  sync drain until acked   : {drain_rate:8.0f} records/s ({fig.drain_s:.2f} s, "
          "verified+committed+acked)")
    print(f"  ratio drain/raw          : {drain_rate / raw_rate:8.2f}  (target >= 0.5)")
    print("  CPU during the drain     : " + ", ".join(
        f"{name} {c / fig.drain_s:.2f} cores ({c / fig.records * 1e6:.0f} us/record)" for name, c in fig.cpu.items())
        + (" (the receiver runs in this process: --no-rx-process)" if in_process else ""))
    print(f"  commit-to-ack latency    : p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
          f"max {max(lat):.1f} ms over {len(lat)} live records (target p99 <= 250 ms)")
    if fig.outage_s is not None:
        print(f"  broker away {args.outage:.0f} s      : gateway reconnected after {fig.reconnect_s or 0:.2f} s, "
              f"first cloud ack {fig.outage_s:.2f} s after the broker came back (target < 10 s; backoff cap "
              f"{cfg.backoff_cap_s} s)")
    print(f"  receiver holds every seq exactly once: {fig.stored_once}; resends {fig.resends}, "
          f"ack mismatches {fig.ack_mismatches}")
    if args.json:
        from bench.figures import Figure, emit

        figs = [Figure("sync drain until acked", drain_rate, "records/s", baseline=raw_rate,
                       baseline_name="raw aiomqtt QoS 1 publish (PUBACKs only)", target="ratio >= 0.5"),
                Figure("commit-to-ack p50", statistics.median(lat), "ms"),
                Figure("commit-to-ack p99", pct(lat, 99), "ms", target="<= 250 ms")]
        if fig.outage_s is not None:
            figs.append(Figure("broker return to first cloud ack", fig.outage_s, "s", target="< 10 s"))
        emit("sync", figs, argv=["--json"])


async def null_acker(broker_url: str, ledger_path: str) -> None:
    """Ack every record as soon as it arrives, with the hash from the ledger itself (no verify, no store)."""
    ledger = Ledger.open(ledger_path, gateway_id=GW, key=None)
    client = make_client(url=parse_broker_url(broker_url), client_id="null-acker", persistent=False)
    async with client:
        await client.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        done: set[int] = set()
        through = 0
        async for m in client.messages:
            payload = bytes(m.payload)
            i = payload.index(b'"sequence":"') + 12
            done.add(int(payload[i:i + 20]))
            while through + 1 in done:
                through += 1
                done.discard(through)
            if len(client.messages) == 0 or through % 64 == 0:
                rec = ledger.get(through)
                if rec is not None:
                    ack = {"epoch": ledger.epoch, "acked_through": through, "head_hash": rec.hash}
                    await client.publish(f"koto/v1/{GW}/down/ack", json.dumps(ack).encode(), qos=1)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--null-acker":
        asyncio.run(null_acker(sys.argv[2], sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--window", type=int, default=SyncConfig.__dataclass_fields__["window"].default)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--latency-gap", type=float, default=0.02, help="seconds between live records")
    p.add_argument("--rx-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the receiver as `koto-cloud serve` in its own process (default) or in this one")
    p.add_argument("--receivers", type=int, default=1, help="koto-cloud serve processes on the shared subscription")
    p.add_argument("--peer", choices=("receiver", "null"), default="receiver",
                   help="null: a trusting acker instead of the receiver, to see the gateway side alone")
    p.add_argument("--broker-nodelay", action="store_true", help="add `set_tcp_nodelay true` to the broker")
    p.add_argument("--outage", type=float, default=0.0, help="seconds the broker is away (0 = skip)")
    p.add_argument("--pg", metavar="DSN", help="store at the receiver in this PostgreSQL database (default SQLite)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
