"""The SD-card write budget: what the gateway writes per appliance-day, beside the records' own bytes and a naive store.

    .venv/bin/python bench/sd_writes.py                         # a simulated day at 60x (about 25 minutes)
    .venv/bin/python bench/sd_writes.py --hours 2 --speed 60    # a shorter look

Nine appliances, polled at 1 Hz of simulated time: eight on Eastron SDM120 register meters, all on ONE simulated
RS-485 bus (addresses 1-8 of one pymodbus RTU server on a pty pair, drivers/modbus_sim.py, read through the one bus
owner exactly as `koto run` reads them), and a kettle on an S0 pulse meter (1000 imp/kWh, pulses driven into a
gpiozero MockFactory pin). Each appliance follows a realistic day (below: washes, a dishwasher at night, cooking,
kettles, an air conditioner in the afternoon, standby in between). The gateway is the production `Gateway` with the
default `[gateway]` settings (checkpoint_s 300, batch_ms 500, interim_s 900), on a `ScaledClock`: the day is
compressed, the gateway's own clock (cadences, batching, interims) compressed with it. By default the gateway
syncs, as a real one does: a real Mosquitto on a free port and the reference receiver (`koto-cloud serve` on its
SQLite store, in a process of its own so that its writes are not counted) ack what it sends, and the cloud's acks
are written to the ledger like everything else; at the end the receiver must hold every record exactly once (exit 1
if not). `--no-cloud` runs the gateway without a `[cloud]` table (no sync, no acks: the figures before 2026-12-06).

Printed, in one run:
1. **ours**: this process's `write_bytes` (/proc/self/io: what reached the block layer, the WAL, its checkpoints
   into the database and the final checkpoint at close included) over the day, per appliance-day;
2. **records**: the records' own bytes (the signed bodies in the ledger), per appliance-day;
3. **naive**: a store of every sample (one SQLite row per reading, WAL, synchronous=FULL, one transaction each),
   measured in the same run on the same disk with the readings this run received: its bytes per sample times the
   samples an appliance yields in a day at 1 Hz.
Targets (issue 10): ours <= 1 MB per appliance-day and <= 10x the records' own bytes. Exits 1 when one is missed.
`--breakdown` also says where the bytes went (docs/ledger.md, "Write budget"): the WAL frames of each commit, the
rest of the 4 KiB page-cache pages they dirty, the WAL index (-shm) pages, the checkpoint into the database at
close, anything else; and the commits by the records they carried. Every run counts the ledger's commits by what
they carried: records (with whatever rode along: checkpoints, an ack), an ack only, or anything else.
Run it on a disk-backed directory (`--dir`, default /var/tmp): on tmpfs nothing reaches a block device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.gpio.sim import mock_factory, run_pulse_train  # noqa: E402
from drivers.modbus_sim import ModbusSimulator, SimMeter  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.simulate import Phase, Script, air_conditioner, kettle, washer  # noqa: E402
from gateway.state import StateDir  # noqa: E402
from koto.clock import ScaledClock  # noqa: E402
from koto.reading import Reading  # noqa: E402

if TYPE_CHECKING:
    from cloud.store import Store

MB = 1_000_000
GW_ID = "bench-gw"
S0_PIN = 17
IMP_PER_KWH = 1000
NAIVE_SAMPLES = 3000  # rows written one transaction each for the naive store (an fsync each)


def dishwasher() -> Script:
    return Script("dishwasher", [Phase("standby", 1, 0.5, ripple=0.0), Phase("wash", 600, 120),
                                 Phase("heat", 1200, 2000, ripple=0.01), Phase("wash", 1500, 150),
                                 Phase("heat", 900, 2000, ripple=0.01), Phase("dry", 1800, 15),
                                 Phase("standby", 1, 0.5, ripple=0.0)])


def dryer() -> Script:
    return Script("dryer", [Phase("standby", 1, 0.8, ripple=0.0), Phase("dry", 4800, 2400),
                            Phase("cool", 600, 250), Phase("standby", 1, 0.8, ripple=0.0)])


def oven() -> Script:
    bake = [Phase("bake", 300, 2500, ripple=0.01), Phase("bake", 240, 40)]
    return Script("oven", [Phase("standby", 1, 1.0, ripple=0.0), Phase("preheat", 600, 3000, ripple=0.01),
                           *bake * 5, Phase("standby", 1, 1.0, ripple=0.0)])


# Each appliance: its profile, the script of one use, and the hours of the day its uses start.
DAY: dict[str, tuple[str, Callable[[], Script], tuple[float, ...]]] = {
    "washer": ("washing_machine", washer, (7.5, 18.0)),
    "washer-2": ("washing_machine", washer, (10.0,)),
    "dishwasher": ("dishwasher", dishwasher, (21.5,)),
    "dryer": ("tumble_dryer", dryer, (9.0, 19.0)),
    "oven": ("oven", oven, (12.0, 18.5)),
    "aircon": ("air_conditioner", air_conditioner, (13.0, 15.0)),
    "kettle-reg": ("kettle", kettle, (7.0, 10.5, 16.0, 20.0)),
    "kettle-reg-2": ("kettle", kettle, (8.0, 14.0)),
    "kettle-s0": ("kettle", kettle, (6.5, 12.5, 17.0)),  # the S0 meter
}
REGISTER = [a for a in DAY if a != "kettle-s0"]


class Day:
    """Power of each appliance at simulated time t (seconds since the start), from its script and its start hours."""

    def __init__(self, start_h: float) -> None:
        self.start_h = start_h
        self.scripts = {aid: make() for aid, (_, make, _) in DAY.items()}

    def power_w(self, aid: str, t: float) -> float:
        script = self.scripts[aid]
        hour_s = ((self.start_h * 3600 + t) % 86400)
        running = [h for h in DAY[aid][2] if 0 <= hour_s - h * 3600 < script.length_s]
        if running:
            return script.power_w(hour_s - running[0] * 3600)
        return script.power_w(0.0) if script.phases[0].watts > 0 else 0.0


class TappedGateway(Gateway):
    """The production gateway, keeping a copy of the first readings it receives (the naive store's rows).

    SQLite maps the WAL's index (`ledger.db-shm`) into memory; every commit dirties a few of its 4 KiB pages (and the
    first read after a writeback dirties its header page again, for a read mark). `write_bytes` counts a page each
    time it goes from clean to dirty, and only the kernel's writeback makes it clean again, so what the -shm costs
    depends on when writeback runs, in real time. `shm_writeback` says how the bench stands in for it:
    - "kernel" (the default): as Linux's flusher would in real time, on the daemon's (compressed) clock: it wakes
      every `dirty_writeback_centisecs` (5 s) and writes back a file that has been dirty for `dirty_expire_centisecs`
      (30 s), both read from /proc/sys/vm (the same defaults on Raspberry Pi OS). Here by an fsync of the -shm at
      that moment: a commit or a read within 30 s of the last one finds its pages still dirty, as it would on a Pi.
    - "commit": an fsync after every commit, so every commit pays for all its -shm pages and every read after it
      for the header page (pessimistic: what this bench did until 2026-12-06).
    - "none": left to the real kernel, which runs on real time: a compressed run undercounts the -shm.
    Since 2026-12-06 (evening) the daemon holds its ledger exclusive (the WAL index in its heap): there is no
    -shm unless a reader in another process borrows the ledger, and all three do nothing (kept for such a run)."""

    tap: list[Reading]
    shm_writeback = "none"
    txs: list[Tx]
    shm_dirty_since: float | None = None  # the daemon's clock (s) when the -shm was first dirtied after a writeback
    commits: list[Commit]
    closing: dict[str, int]

    def _feed(self, reading: Reading) -> None:
        if len(self.tap) < NAIVE_SAMPLES:
            self.tap.append(reading)
        super()._feed(reading)

    def _append(self, drafts: list[Any], checkpoints: dict[str, dict[str, Any]]) -> int:
        wal = self.cfg.state_dir / "ledger.db-wal"
        size0, bytes0 = _size(wal), write_bytes()
        n = super()._append(drafts, checkpoints)
        size1, bytes1 = _size(wal), write_bytes()
        if self.shm_writeback == "commit":
            fsync_shm(self.cfg.state_dir)
        elif self.shm_writeback == "kernel" and self.shm_dirty_since is None:
            self.shm_dirty_since = self.clock.now().mono_ns / 1e9
        kinds = tuple(sorted({str(d.data.get("kind") or d.data.get("event") or d.type) for d in drafts}))
        self.commits.append(Commit(n, kinds, len(checkpoints), size0, size1, bytes1 - bytes0, write_bytes() - bytes1))
        return n


@dataclass(frozen=True)
class Commit:
    """What one `_append` wrote: its records, the WAL's growth and the process's `write_bytes` during the commit
    (the WAL's page-cache pages and the -shm pages dirtied through its map) and during the -shm fsync after it."""

    records: int
    kinds: tuple[str, ...]
    checkpoints: int
    wal_before: int
    wal_after: int
    during: int
    shm_fsync: int

    @property
    def wal_pages_4k(self) -> int:
        """The WAL's 4 KiB page-cache pages this commit dirtied (each clean after the last commit's fsync)."""
        if self.wal_after <= self.wal_before:
            return 0
        return -(-self.wal_after // 4096) - self.wal_before // 4096


def fsync_shm(state: Path) -> None:
    """Write the WAL index's dirty pages back (the next write to each is counted again)."""
    try:
        fd = os.open(state / "ledger.db-shm", os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vm_centisecs(name: str, default: int) -> float:
    """A writeback setting from /proc/sys/vm, in seconds (the kernel's default when it cannot be read)."""
    try:
        return int(Path(f"/proc/sys/vm/{name}").read_text()) / 100
    except (OSError, ValueError):
        return default / 100


async def kernel_writeback(gw: TappedGateway, clock: ScaledClock) -> int:
    """Stand in for the kernel's flusher on the -shm, on the daemon's clock (see TappedGateway); returns how many
    writebacks it made. A dirtying outside a commit (a read mark) is seen as `write_bytes` moving since the last
    writeback and dated at the previous wake-up: the earliest it can have been, so the earliest it is made clean."""
    interval, expire = vm_centisecs("dirty_writeback_centisecs", 500), vm_centisecs("dirty_expire_centisecs", 3000)
    state = gw.cfg.state_dir
    clean_at = write_bytes()
    last_wake = clock.now().mono_ns / 1e9
    n = 0
    while True:
        await clock.sleep(interval)
        now = clock.now().mono_ns / 1e9
        if gw.shm_dirty_since is None and write_bytes() != clean_at:
            gw.shm_dirty_since = last_wake
        last_wake = now
        if gw.shm_dirty_since is not None and now - gw.shm_dirty_since >= expire:
            gw.shm_dirty_since = None
            fsync_shm(state)
            clean_at = write_bytes()
            n += 1


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes")


def config(state: Path, port: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    apps: list[dict[str, Any]] = []
    for i, aid in enumerate(REGISTER, start=1):
        apps.append({"id": aid, "profile": DAY[aid][0], "energy": f"{aid}-meter",
                     "sources": {f"{aid}-meter": {"driver": "modbus", "model": "sdm120", "port": port, "address": i,
                                                  "baud": 9600, "poll_s": 1.0, "timeout_s": 0.3}}})
    apps.append({"id": "kettle-s0", "profile": "kettle", "energy": "kettle-pulses",
                 "sources": {"kettle-pulses": {"driver": "s0", "pin": S0_PIN, "imp_per_kwh": IMP_PER_KWH}}})
    for app in apps:
        app.update(overrides.get("appliance", {}))
    return {"gateway": {"id": GW_ID, "state_dir": str(state), "timezone": "UTC", **overrides.get("gateway", {})},
            "appliance": apps, **({"cloud": overrides["cloud"]} if overrides.get("cloud") else {})}


async def run_day(state: Path, hours: float, speed: float, start_h: float, overrides: dict[str, dict[str, Any]],
                  frames: Path | None = None, *, shm_writeback: str = "kernel") -> tuple[int, TappedGateway, float]:
    """Run the gateway through `hours` of simulated use; returns (write_bytes over the run, the gateway, sim s)."""
    clock = ScaledClock(speed)
    t0 = clock.now().mono_ns
    day = Day(start_h)

    def sim_t() -> float:
        return (clock.now().mono_ns - t0) / 1e9

    meters = [SimMeter("sdm120", i, energy_kwh=1000.0 + i, time_fn=sim_t,
                       power_fn=lambda t, aid=aid: day.power_w(aid, t))  # type: ignore[misc]
              for i, aid in enumerate(REGISTER, start=1)]
    factory = mock_factory()
    async with ModbusSimulator(meters) as bus:
        cfg = parse_config(config(state, bus.port, overrides), file="<bench sd_writes>")
        gw = TappedGateway(cfg, clock=clock, backends={"pin_factory": factory}, sync_enabled=cfg.cloud is not None)
        gw.tap = []
        gw.commits = []
        gw.shm_writeback = shm_writeback
        gw.closing = {}
        _measure_close(gw, state / "ledger.db")
        _tap_transactions(gw, shm_writeback=shm_writeback)
        pin = _pin_wal(state / "ledger.db") if frames is not None else None
        before = write_bytes()
        stop = asyncio.Event()
        pulses = asyncio.create_task(run_pulse_train(factory.pin(S0_PIN), clock,
                                                     lambda: int(day.power_w("kettle-s0", sim_t()) * 1000),
                                                     IMP_PER_KWH, step_s=1.0))
        flusher = asyncio.create_task(kernel_writeback(gw, clock)) if shm_writeback == "kernel" else None
        runner = asyncio.create_task(gw.run(stop))
        real0 = time.monotonic()
        await asyncio.wait([runner], timeout=hours * 3600 / speed)
        stop.set()
        await runner  # a clean stop: the last batch, then the ledger closes (its final WAL checkpoint)
        pulses.cancel()
        if flusher is not None:
            flusher.cancel()
        await asyncio.gather(pulses, *([flusher] if flusher else []), return_exceptions=True)
        written = write_bytes() - before
        if pin is not None and frames is not None:
            from bench.wal_frames import copy_ledger

            copy_ledger(state / "ledger.db", frames)
            pin.close()
        print(f"  ran {sim_t() / 3600:.2f} simulated hours in {time.monotonic() - real0:.0f} s", file=sys.stderr)
    return written, gw, sim_t()


def _measure_close(gw: TappedGateway, db: Path) -> None:
    """Count what closing the ledger writes (SQLite's checkpoint of the WAL into the database at the last close)."""
    from bench.wal_frames import wal_pages

    real_close = gw.ledger.close

    def close() -> None:
        wal = db.with_name(db.name + "-wal")
        if wal.exists() and "bytes" not in gw.closing:
            gw.closing["frames"], gw.closing["distinct_pages"], gw.closing["page_size"] = wal_pages(wal)
        b0 = write_bytes()
        real_close()
        gw.closing["bytes"] = gw.closing.get("bytes", 0) + write_bytes() - b0

    gw.ledger.close = close  # type: ignore[method-assign]


@dataclass(frozen=True)
class Tx:
    """One ledger commit, by what it carried: "records" (with whatever rode along: checkpoints, an ack), "ack only"
    (the cloud's acked point and its `acks` row), or "other" (checkpoints without records, an ack riding along or
    not; a prune; a document); and the
    process's `write_bytes` from its BEGIN to after its -shm fsync (none for a records commit: `_append` does it)."""

    what: str
    bytes: int


def _tap_transactions(gw: TappedGateway, *, shm_writeback: str) -> None:
    """Count every commit of the ledger by what it carried (`gw.txs`), whichever code path made it.

    The facade opens each write transaction through `store.transaction`; the wrapper reads the chain head, the
    acked point and the checkpoints on the same connection inside the transaction (no read transaction of its own,
    so no extra WAL-index read mark), before and after the caller's statements. A commit without records gets the
    -shm writeback that `TappedGateway._append` gives a records commit, so that it too pays its WAL-index pages as in
    real time."""
    from metering.ledger import store

    real = store.transaction
    shm = gw.cfg.state_dir / "ledger.db-shm"
    gw.txs = []

    def marks(conn: sqlite3.Connection) -> tuple[str, str, str]:
        kv = dict(conn.execute("SELECT key, value FROM kv WHERE key IN ('head_seq', 'acked_through')").fetchall())
        ckpts = conn.execute("SELECT group_concat(name || state) FROM checkpoints").fetchone()[0] or ""
        return kv.get("head_seq", ""), kv.get("acked_through", ""), ckpts

    @contextlib.contextmanager
    def tapped(conn: sqlite3.Connection, path: Path, failure: str) -> Iterator[None]:
        b0 = write_bytes()
        with real(conn, path, failure):
            head0, acked0, ckpts0 = marks(conn)
            yield
            head1, acked1, ckpts1 = marks(conn)
        what = ("records" if head1 != head0 else "other" if ckpts1 != ckpts0
                else "ack only" if acked1 != acked0 else "other")
        if what != "records" and shm.exists():
            if shm_writeback == "commit":
                fsync_shm(gw.cfg.state_dir)
            elif shm_writeback == "kernel" and gw.shm_dirty_since is None:
                gw.shm_dirty_since = gw.clock.now().mono_ns / 1e9
        gw.txs.append(Tx(what, write_bytes() - b0))

    store.transaction = tapped


def commits_line(gw: TappedGateway, app_days: float) -> str:
    """The run's ledger commits by what they carried, and what the ack-only ones wrote."""
    by: dict[str, list[Tx]] = {}
    for t in gw.txs:
        by.setdefault(t.what, []).append(t)
    acks = by.get("ack only", [])
    ack_bytes = sum(t.bytes for t in acks)
    line = (f"commits: {len(by.get('records', []))} with records, {len(acks)} ack only, "
            f"{len(by.get('other', []))} other")
    if acks:
        line += (f"; the ack-only ones wrote {ack_bytes / len(acks) / 1024:.1f} KiB each, "
                 f"{ack_bytes / app_days / MB:.3f} MB per appliance-day (in --breakdown's 'anything else', or its "
                 "close when written there)")
    return line



@contextlib.contextmanager
def cloud_peers(work: Path, state: Path) -> Iterator[tuple[str, Store]]:
    """A real Mosquitto on a free port and the reference receiver (`koto-cloud serve` on SQLite, in a process of its
    own: its writes are not this process's), started with bench/sync.py's helpers; the bench gateway's key is
    registered at the receiver's store. Yields the broker's URL and the store (to check what it holds)."""
    from bench.sync import open_cloud_store, start_peers
    from tests.support.broker import Mosquitto

    peers = argparse.Namespace(peer="receiver", rx_process=True, receivers=1, pg=None)
    with Mosquitto(work / "broker") as broker:
        store, db = open_cloud_store(peers, work)
        store.register(GW_ID, StateDir(state).public_key_path.read_text())
        procs = start_peers(peers, broker, work, db, {})
        try:
            time.sleep(2.0)  # the receiver subscribed before the gateway's first records (a resend would cover it)
            yield broker.url, store
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
            store.close()


def cloud_holds_all(store: Store, db: Path, within_s: float = 30.0) -> tuple[bool, str]:
    """Whether the receiver holds every record of the ledger exactly once (seqs 1..head, each once), waiting up to
    `within_s` for the last ones; and a line saying so."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        kv = dict(conn.execute("SELECT key, value FROM kv WHERE key IN ('epoch', 'head_seq', 'acked_through')"))
    finally:
        conn.close()
    epoch, head = int(kv["epoch"]), int(kv["head_seq"])
    want = list(range(1, head + 1))
    deadline = time.monotonic() + within_s
    while (seqs := store.stored_seqs(GW_ID, epoch)) != want and time.monotonic() < deadline:
        time.sleep(0.5)
    ok = seqs == want
    return ok, (f"cloud: the receiver holds {len(seqs)} of {head} records, every seq exactly once: {ok}; "
                f"the ledger's written ack at the end: seq {kv['acked_through']}")


def breakdown(gw: TappedGateway, written: int, app_days: float) -> list[str]:
    """Where the run's `write_bytes` went: the WAL's frames and the page-cache pages they dirtied, the -shm pages,
    the checkpoint at close, and whatever else; then the commits grouped by how many records they carried."""
    done = [c for c in gw.commits if c.wal_after > c.wal_before]
    frames = sum(c.wal_after - c.wal_before for c in done)
    wal_pc = sum(c.wal_pages_4k for c in done) * 4096
    during = sum(c.during for c in gw.commits)
    shm = during - wal_pc + sum(c.shm_fsync for c in gw.commits)
    close = gw.closing.get("bytes", 0)
    other = written - during - sum(c.shm_fsync for c in gw.commits) - close
    n = max(len(done), 1)

    def row(name: str, b: float, note: str = "") -> str:
        return f"  {name:<46}{b / app_days / MB:>8.3f} MB{b / n / 1024:>9.1f} KiB{100 * b / written:>6.1f} %  {note}"

    out = [f"breakdown: {len(done)} commits ({len(gw.commits) - len(done)} append calls wrote nothing), "
           f"{sum(c.records for c in done)} records",
           f"  {'':<46}{'/app-day':>11}{'/commit':>13}{'share':>8}",
           row("WAL frames (page + 24-byte header each)", frames, f"{frames / n / 1048:.1f} frames/commit"),
           row("WAL: rest of the 4 KiB pages they re-dirty", wal_pc - frames),
           row("WAL index (-shm), dirtied through its map", shm, f"{shm / n / 4096:.1f} pages of 4 KiB/commit"),
           row("checkpoint into ledger.db at close", close,
               f"{gw.closing.get('distinct_pages', 0)} distinct pages of "
               f"{gw.closing.get('frames', 0)} frames"),
           row("anything else", other),
           row("total (write_bytes)", written)]
    shapes: dict[str, list[Commit]] = {}
    for c in done:
        key = (f"{min(c.records, 4)}{'+' if c.records >= 4 else ''} record(s)" if c.records
               else "no record (checkpoints only)")
        shapes.setdefault(key, []).append(c)
    out.append("  commits by records carried: count, WAL frames/commit, bytes/commit (WAL page cache + -shm)")
    for key, cs in sorted(shapes.items()):
        per = sum(c.wal_pages_4k * 4096 + (c.during - c.wal_pages_4k * 4096) + c.shm_fsync for c in cs) / len(cs)
        fr = sum(c.wal_after - c.wal_before for c in cs) / len(cs) / 1048
        out.append(f"    {key:<30}{len(cs):>4} x {fr:5.1f} frames {per / 1024:7.1f} KiB")
    kinds: dict[tuple[str, ...], int] = {}
    for c in done:
        kinds[c.kinds] = kinds.get(c.kinds, 0) + 1
    out.append("  commits by the kinds of record they carried: " + "; ".join(
        f"{n} x {'+'.join(k) or '-'}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:10]))
    return out


def _pin_wal(db: Path) -> sqlite3.Connection:
    """A reader holding a snapshot for the whole run: no checkpoint resets the WAL, so it keeps every frame."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM kv").fetchone()
    return conn


def records_bytes(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n, size = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM records").fetchone()
    finally:
        conn.close()
    return int(n), int(size)


def naive_store(path: Path, samples: list[Reading]) -> float:
    """Bytes written per sample by one SQLite row per reading (WAL, synchronous=FULL, a transaction each)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE samples (t_ns INTEGER, source TEXT, quantity TEXT, value INTEGER)")
    before = write_bytes()
    for r in samples:
        conn.execute("INSERT INTO samples VALUES (?,?,?,?)", (r.t_mono_ns, r.source, str(r.quantity), r.value))
    conn.close()
    return (write_bytes() - before) / len(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24: a day)")
    ap.add_argument("--speed", type=float, default=60.0, help="time compression (default 60x: polls keep up)")
    ap.add_argument("--start-hour", type=float, default=5.0, help="local hour the run starts at (default 05:00)")
    ap.add_argument("--dir", default="/var/tmp", help="a disk-backed directory for the ledgers (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the ledger (its path is printed)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    ap.add_argument("--hold-s", type=float, help="[gateway] hold_s instead of the default")
    ap.add_argument("--hold-use-s", type=float, help="[gateway] hold_use_s instead of the default")
    ap.add_argument("--shm-writeback", choices=("kernel", "commit", "none"), default="kernel",
                    help="how the WAL index's (-shm) writeback is stood in for (see TappedGateway): as the kernel's "
                         "flusher in real time (default), after every commit (pessimistic), or not (undercounted)")
    ap.add_argument("--no-shm-writeback", dest="shm_writeback", action="store_const", const="none",
                    help="the same as --shm-writeback none")
    ap.add_argument("--interim-s", type=float, help="[[appliance]] interim_s instead of the default")
    ap.add_argument("--idle-interim-s", type=float, help="[[appliance]] idle_interim_s instead of the default")
    ap.add_argument("--page-size", type=int, help="the new ledger's SQLite page size instead of store.PAGE_SIZE")
    ap.add_argument("--breakdown", action="store_true",
                    help="also say where the bytes went: WAL frames, their page-cache pages, -shm, checkpoint at close")
    ap.add_argument("--frames", action="store_true",
                    help="instead of the budget: keep every WAL frame and say which b-trees each commit wrote")
    ap.add_argument("--cloud", action=argparse.BooleanOptionalAction, default=True,
                    help="sync to a real Mosquitto and the reference receiver, which ack (default, as a real gateway "
                         "does); --no-cloud: no [cloud] table, no sync, no acks")
    args = ap.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {"gateway": {}, "appliance": {}}
    for key in ("hold_s", "hold_use_s"):
        if getattr(args, key) is not None:
            overrides["gateway"][key] = getattr(args, key)
    for key in ("interim_s", "idle_interim_s"):
        if getattr(args, key) is not None:
            overrides["appliance"][key] = getattr(args, key)
    if args.page_size:
        from metering.ledger import store

        store.PAGE_SIZE = args.page_size  # read when the ledger is created (store.connect)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="koto-sd-", dir=args.dir))
    cloud_ok, cloud_said = True, "cloud: none (--no-cloud)"
    try:
        state = work / "state"
        StateDir(state).provision()
        frames = work / "frames" if args.frames else None
        with cloud_peers(work, state) if args.cloud else contextlib.nullcontext() as peer:
            if peer is not None:
                overrides["cloud"] = {"broker": peer[0]}
            written, gw, sim_s = asyncio.run(run_day(state, args.hours, args.speed, args.start_hour, overrides,
                                                        frames, shm_writeback=args.shm_writeback))
            if peer is not None:
                cloud_ok, cloud_said = cloud_holds_all(peer[1], state / "ledger.db")
        if frames is not None:
            from bench.wal_frames import analyse

            print("\n".join(analyse(frames / "ledger.db").lines()))
        if written == 0:
            print(f"{args.dir}: nothing reached a block device (tmpfs?); use --dir on a disk", file=sys.stderr)
            return 2
        n_records, rec_bytes = records_bytes(state / "ledger.db")
        per_sample = naive_store(work / "naive.db", gw.tap)
    finally:
        if args.keep:
            print(f"  ledger kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    apps = len(DAY)
    app_days = apps * sim_s / 86400
    readings_per_app_s = gw.stats.readings / apps / sim_s  # what this run received (compression may slow polls)
    # Modbus polls per meter per simulated second this run achieved (1.0 when compression kept up)
    polls_per_s = sum(getattr(s.source, "polls", 0) for s in gw.sources.values()) / len(REGISTER) / sim_s
    samples_per_day = readings_per_app_s / max(polls_per_s, 1e-9) * 86400  # at 1 Hz
    ours = written / app_days
    records = rec_bytes / app_days
    naive = per_sample * samples_per_day
    print(f"write budget, {apps} appliances (8 SDM120 on one RS-485 bus + 1 S0), {sim_s / 3600:.1f} simulated h "
          f"at {args.speed:g}x, polled at 1 Hz ({polls_per_s:.2f} polls/s achieved, "
          f"{readings_per_app_s:.1f} readings/appliance/s), {n_records} records, {gw.stats.batches} transactions, "
          f"-shm writeback: {args.shm_writeback}")
    print(f"{'per appliance-day':<22}{'ours':>12}{'records':>12}{'naive':>12}")
    print(f"{'bytes':<22}{ours / MB:>10.3f}MB{records / MB:>10.3f}MB{naive / MB:>10.1f}MB")
    print(f"ours / records {ours / records:.1f}x (target <= 10x); ours {ours / MB:.3f} MB (target <= 1 MB); "
          f"naive / ours {naive / ours:.0f}x; naive measured at {per_sample:.0f} bytes/sample x "
          f"{samples_per_day:,.0f} samples/appliance-day")
    print(commits_line(gw, app_days))
    print(cloud_said)
    if args.breakdown:
        print("\n".join(breakdown(gw, written, app_days)))
    if args.json:
        from bench.figures import Figure, emit

        emit("sd_writes", [
            Figure("SD bytes per appliance-day", ours / MB, "MB", baseline=records / MB,
                   baseline_name="the records' own bytes", target="<= 1 MB and <= 10x the records"),
            Figure("SD bytes per appliance-day vs a naive store", ours / MB, "MB", baseline=naive / MB,
                   baseline_name="naive store of every sample (SQLite row per reading)"),
        ], argv=["--json"])
    ok = ours <= 1 * MB and ours <= 10 * records and cloud_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
