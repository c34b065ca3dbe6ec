"""Fleet bench: many simulated gateways through a RabbitMQ cluster to 1, 2 and 4 receivers and PostgreSQL.

    .venv/bin/python -m bench.fleet              # full size (make bench-fleet): 1,000 gateways, 200 x 1,000 burst
    .venv/bin/python -m bench.fleet --quick      # smoke run: 100 gateways, a 20 x 200-record burst, 1 and 2 receivers
    .venv/bin/python -m bench.fleet --mosquitto  # also the same load on one Mosquitto with `koto-cloud serve` on $share

Per receiver count (one column each, printed side by side at the end), on one three-node RabbitMQ cluster
(tests/support/rabbit.py) and one PostgreSQL server (a fresh database per column):
1. steady: the gateways that stay online make records at `--rate` records/s in all (each record "committed" to its
   gateway's ledger at a known time), sent as the contract says (tests/support/fleet.py: real signed, chained
   records, its own key per gateway, own topics, acks checked against the gateway's own hashes). Commit-to-ack
   latency p50/p99 is from a record being made to its gateway receiving the cumulative ack covering it.
2. burst: `--burst-gateways` gateways that were offline come back with `--burst-records` records each (their links
   connect only then) while the steady load goes on; records/s is the burst's records over the time from their
   reconnect until every one of them is acked (verified, committed, acked).
3. CPU per record: user+system CPU of the receiver processes (/proc/<pid>/stat), and of the three broker nodes,
   over the column, divided by the records stored.

The simulated gateways share MQTT connections (`--links`, 100 gateways each by default): the broker sees tens of
connections, not a thousand, but every gateway has its own topics, chain, key, birth and acks. Everything runs on
one machine (2 cores here): the broker nodes, PostgreSQL, the receivers and the simulator compete for the same
cores, so the figures are a floor for one node per machine, and the scaling from 1 to 4 receivers is bounded by
the cores, not by the design. Say so with every figure quoted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloud.mqtt import Connection
from cloud.store import PostgresStore
from koto.net import parse_broker_url
from tests.support.broker import Mosquitto
from tests.support.fleet import FleetLink, SimGateway, spread
from tests.support.postgres import PostgresServer
from tests.support.rabbit import RabbitCluster

KOTO_CLOUD = [sys.executable, "-c", "import sys; from cloud.cli import main; sys.exit(main())"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))] if xs else float("nan")


@dataclass
class Column:
    label: str
    steady_offered: float = 0.0
    steady_p50_ms: float = float("nan")
    steady_p99_ms: float = float("nan")
    during_burst_p50_ms: float = float("nan")
    during_burst_p99_ms: float = float("nan")
    burst_records: int = 0
    burst_s: float = float("nan")
    stored: int = 0
    rx_cpu_s: float = 0.0
    broker_cpu_s: float = 0.0
    exact: bool = False
    mismatches: int = 0
    notes: list[str] = field(default_factory=list)


def make_fleet(args: argparse.Namespace) -> tuple[list[SimGateway], list[SimGateway]]:
    steady_n = args.gateways - args.burst_gateways
    # Enough records for the steady phase and as long again during the burst.
    per_gw = max(2, int(args.rate * args.steady_s * 3 / max(1, steady_n)) + 1)
    t0 = time.monotonic()
    steady = [SimGateway.new(f"gw-{i:05d}", per_gw) for i in range(steady_n)]
    burst = [SimGateway.new(f"gw-{i:05d}", args.burst_records) for i in range(steady_n, args.gateways)]
    print(f"fleet: {steady_n} online gateways x {per_gw} records, {len(burst)} returning x {args.burst_records} "
          f"(signed in {time.monotonic() - t0:.0f} s)", flush=True)
    return steady, burst


def reset(gws: list[SimGateway]) -> None:
    for g in gws:
        g.made_at.clear()
        g.latencies.clear()
        g.acked = g.sent = g.mismatches = g.acks = 0


def create_db(admin_dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


def start_receivers(cmds: list[list[str]], folder: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i, cmd in enumerate(cmds):
        log = (folder / f"rx{i}.log").open("ab")
        proc = subprocess.Popen([*KOTO_CLOUD, *cmd], stdout=subprocess.PIPE, stderr=log)
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise SystemExit(f"receiver did not start: {line!r}; see {folder}/rx{i}.log")
        procs.append(proc)
    return procs


def stop_receivers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout:
            p.stdout.close()


async def forget_sessions(urls: list[str], client_ids: list[str]) -> None:
    """Connect once with a clean session per client id, so the next column starts without last column's queues."""
    url = parse_broker_url(urls[0], file="bench", key="url")
    for cid in client_ids:
        async with Connection(url, client_id=cid, protocol=311, session_expiry_s=None, timeout=10.0):
            pass


async def produce(gws: list[SimGateway], rate: float, tick_s: float = 0.05) -> None:
    """Make `rate` records/s in all, one at a time to the gateways in turn, until their records run out."""
    i, owed = 0, 0.0
    while True:
        owed += rate * tick_s
        live = [g for g in gws if g.made < g.total]
        if not live:
            return
        while owed >= 1:
            live[i % len(live)].make(1)
            i += 1
            owed -= 1
        await asyncio.sleep(tick_s)


async def until(cond: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def column(args: argparse.Namespace, col: Column, mqtt_urls: list[str], steady: list[SimGateway],
                 burst: list[SimGateway], rx_pids: list[int], broker_pids: list[int], tag: str) -> None:
    reset(steady + burst)
    per_link = args.per_link
    steady_links = [FleetLink(mqtt_urls[i % len(mqtt_urls):] + mqtt_urls[:i % len(mqtt_urls)], gs,
                              client_id=f"fleet-{tag}-s{i}", window=args.window)
                    for i, gs in enumerate(spread(steady, max(1, len(steady) // per_link)))]
    burst_links = [FleetLink(mqtt_urls[i % len(mqtt_urls):] + mqtt_urls[:i % len(mqtt_urls)], gs,
                             client_id=f"fleet-{tag}-b{i}", window=args.window)
                   for i, gs in enumerate(spread(burst, max(1, len(burst) // per_link)))]
    cpu0 = [cpu_s(p) for p in rx_pids], [cpu_s(p) for p in broker_pids]
    tasks = [asyncio.create_task(link.run()) for link in steady_links]
    try:
        await until(lambda: all(link.connected.is_set() for link in steady_links), 60, "the steady links")
        t_steady = time.monotonic()
        producer = asyncio.create_task(produce(steady, args.rate))
        await asyncio.sleep(args.steady_s)
        col.steady_offered = sum(g.made for g in steady) / (time.monotonic() - t_steady)

        t_burst = time.monotonic()
        for g in burst:
            g.make(g.total, t_burst)  # made while offline: the backlog they come back with
        tasks += [asyncio.create_task(link.run()) for link in burst_links]
        await until(lambda: all(g.done for g in burst), args.timeout, "the burst to be acked")
        col.burst_s = time.monotonic() - t_burst
        col.burst_records = sum(g.total for g in burst)
        producer.cancel()
        await until(lambda: all(g.acked >= g.made for g in steady), 120, "the steady records to be acked")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    col.rx_cpu_s = sum(cpu_s(p) - c for p, c in zip(rx_pids, cpu0[0], strict=True))
    col.broker_cpu_s = sum(cpu_s(p) - c for p, c in zip(broker_pids, cpu0[1], strict=True))
    before, during = [], []
    for g in steady:
        for t_made, lat in zip(g.made_at, g.latencies, strict=False):
            (before if t_made < t_burst else during).append(lat * 1000)
    col.steady_p50_ms, col.steady_p99_ms = pct(before, 50), pct(before, 99)
    col.during_burst_p50_ms, col.during_burst_p99_ms = pct(during, 50), pct(during, 99)
    col.mismatches = sum(g.mismatches for g in steady + burst)
    await forget_sessions(mqtt_urls, [link.client_id for link in steady_links + burst_links])


def check_store(dsn: str, gws: list[SimGateway], col: Column) -> None:
    with PostgresStore(dsn) as store:
        col.stored = store.count()
        made = sum(g.made for g in gws)
        col.exact = col.stored == made and all(
            store.stored_seqs(g.gw, 1) == list(range(1, g.made + 1)) for g in gws[:: max(1, len(gws) // 50)])


async def run_rabbit(args: argparse.Namespace, tmp: Path, pg: PostgresServer, steady: list[SimGateway],
                     burst: list[SimGateway]) -> list[Column]:
    cols = []
    with RabbitCluster(tmp / "rabbit", nodes=args.nodes) as rc:
        mqtt_urls = [n.mqtt_url for n in rc.nodes]
        broker_pids = [pid for n in rc.nodes if (pid := n.beam_pid()) is not None]
        for n in args.receivers:
            col = Column(f"rabbit x{n}")
            dsn = create_db(pg.dsn, f"fleet_rabbit_{n}")
            with PostgresStore(dsn) as store:
                for g in steady + burst:
                    store.register(g.gw, g.factory.public_pem)
            cmds = []
            for i in range(n):
                cmd = ["serve-amqp", "--db", dsn, "--shards", str(args.shards), "--instance", str(i),
                       "--instances", str(n)]
                for url in rc.amqp_urls:
                    cmd += ["--amqp", url]
                cmds.append(cmd)
            procs = start_receivers(cmds, tmp)
            await asyncio.sleep(2.5)  # the standby consumers register (cloud/amqp.py standby_after_s)
            try:
                await column(args, col, mqtt_urls, steady, burst, [p.pid for p in procs], broker_pids, f"r{n}")
            finally:
                stop_receivers(procs)
            check_store(dsn, steady + burst, col)
            cols.append(col)
            print(f"  {col.label}: burst {col.burst_records / col.burst_s:.0f} records/s, steady p50 "
                  f"{col.steady_p50_ms:.0f} ms", flush=True)
    return cols


async def run_mosquitto(args: argparse.Namespace, tmp: Path, pg: PostgresServer, steady: list[SimGateway],
                        burst: list[SimGateway]) -> list[Column]:
    cols = []
    with Mosquitto(tmp / "mosquitto") as broker:
        assert broker.proc is not None
        for n in args.receivers:
            col = Column(f"mosq $share x{n}")
            dsn = create_db(pg.dsn, f"fleet_mosq_{n}")
            with PostgresStore(dsn) as store:
                for g in steady + burst:
                    store.register(g.gw, g.factory.public_pem)
            procs = start_receivers([["serve", "--broker", broker.url, "--db", dsn] for _ in range(n)], tmp)
            try:
                await column(args, col, [broker.url], steady, burst, [p.pid for p in procs], [broker.proc.pid],
                             f"m{n}")
            finally:
                stop_receivers(procs)
            check_store(dsn, steady + burst, col)
            cols.append(col)
            print(f"  {col.label}: burst {col.burst_records / col.burst_s:.0f} records/s", flush=True)
    return cols


def report(args: argparse.Namespace, cols: list[Column]) -> None:
    def row(name: str, cells: list[str]) -> None:
        print(f"  {name:<34}" + "".join(f"{c:>18}" for c in cells))

    print(f"\nfleet bench: {args.gateways} gateways ({args.burst_gateways} returning with {args.burst_records} "
          f"records each), steady {args.rate:g} records/s for {args.steady_s:g} s, {args.nodes}-node RabbitMQ "
          f"{args.shards} shards, PostgreSQL; one {os.cpu_count()}-core machine for everything (noisy)")
    row("", [c.label for c in cols])
    row("steady offered records/s", [f"{c.steady_offered:.0f}" for c in cols])
    row("steady commit-to-ack p50 / p99 ms", [f"{c.steady_p50_ms:.0f} / {c.steady_p99_ms:.0f}" for c in cols])
    row("  same, during the burst", [f"{c.during_burst_p50_ms:.0f} / {c.during_burst_p99_ms:.0f}" for c in cols])
    row("burst records/s (until all acked)", [f"{c.burst_records / c.burst_s:.0f}" for c in cols])
    row("burst drain s", [f"{c.burst_s:.1f}" for c in cols])
    row("receiver CPU us/record (all rx)", [f"{c.rx_cpu_s / max(1, c.stored) * 1e6:.0f}" for c in cols])
    row("broker CPU us/record (all nodes)", [f"{c.broker_cpu_s / max(1, c.stored) * 1e6:.0f}" for c in cols])
    row("stored, exactly once", [f"{c.stored} {'yes' if c.exact else 'NO'}" for c in cols])
    row("ack mismatches", [str(c.mismatches) for c in cols])
    rates = [c.burst_records / c.burst_s for c in cols if c.label.startswith("rabbit")]
    if len(rates) > 1:
        print("  burst scaling vs 1 receiver: " + ", ".join(f"{r / rates[0]:.2f}x" for r in rates))


def emit_figures(cols: list[Column]) -> None:
    """The figures for bench/report.py: per column, the burst rate beside one receiver's, latency and CPU."""
    from bench.figures import Figure, emit

    base = cols[0].burst_records / cols[0].burst_s
    figs = []
    for c in cols:
        rate = c.burst_records / c.burst_s
        figs += [
            Figure(f"{c.label}: burst records/s until acked", round(rate), "records/s", baseline=round(base),
                   baseline_name=cols[0].label),
            Figure(f"{c.label}: steady commit-to-ack p50", round(c.steady_p50_ms), "ms"),
            Figure(f"{c.label}: steady commit-to-ack p99", round(c.steady_p99_ms), "ms"),
            Figure(f"{c.label}: receiver CPU per record", round(c.rx_cpu_s / max(1, c.stored) * 1e6), "us"),
            Figure(f"{c.label}: broker CPU per record", round(c.broker_cpu_s / max(1, c.stored) * 1e6), "us"),
            Figure(f"{c.label}: stored exactly once", 1.0 if c.exact else 0.0, "yes=1", target="1"),
        ]
    emit("fleet", figs, argv=["--json"])


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a short smoke run (100 gateways, 1 and 2 receivers)")
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0, help="steady records/s over the whole fleet")
    ap.add_argument("--steady-s", type=float, default=60.0)
    ap.add_argument("--burst-gateways", type=int, default=200)
    ap.add_argument("--burst-records", type=int, default=1000)
    ap.add_argument("--receivers", default="1,2,4", help="receiver counts, one column each")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--per-link", type=int, default=100, help="gateways per MQTT connection")
    ap.add_argument("--window", type=int, default=100, help="each gateway's in-flight window")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a burst may take")
    ap.add_argument("--mosquitto", action="store_true", help="also run on one Mosquitto with $share receivers")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    args = ap.parse_args(argv)
    if args.quick:  # smaller defaults; an option given on the command line still wins
        quick = {"gateways": 100, "burst_gateways": 20, "burst_records": 200, "rate": 50.0, "steady_s": 10.0,
                 "receivers": "1,2", "per_link": 25}
        for name, value in quick.items():
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    args.receivers = [int(x) for x in str(args.receivers).split(",")]
    return args


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="koto-bench-fleet-"))
    steady, burst = make_fleet(args)
    t0 = time.monotonic()
    with PostgresServer() as pg:
        cols = await run_rabbit(args, tmp, pg, steady, burst)
        if args.mosquitto:
            cols += await run_mosquitto(args, tmp, pg, steady, burst)
    report(args, cols)
    if args.json:
        emit_figures(cols)
    print(f"  (whole run {time.monotonic() - t0:.0f} s; logs in {tmp})")
    if statistics.fmean(1.0 if c.exact else 0.0 for c in cols) < 1:
        raise SystemExit("some records were not stored exactly once")


def main(argv: list[str] | None = None) -> None:
    # A SIGTERM (bench/report.py's time limit, `timeout`) unwinds like Ctrl-C, so the broker nodes and PostgreSQL
    # this bench started are stopped, not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(main_async(parse(argv)))


if __name__ == "__main__":
    main()
