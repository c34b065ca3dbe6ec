"""The soak: 24 simulated hours of the real gateway with 16 appliances; memory, file descriptors, threads and asyncio
tasks must stay flat.

    .venv/bin/python bench/soak.py                 # `make soak`: 24 simulated hours at 60x (about 25 minutes)
    .venv/bin/python bench/soak.py --quick         # 2 simulated hours, sampled every 15 simulated minutes
    .venv/bin/python bench/soak.py --json          # also one JSON object of figures on the last stdout line

The system is the chaos suite's rig (tests/chaos/rig.py) without the faults: the real `koto run` in a child process
(tests/support/sim_gateway.py) with 16 appliances — 8 on Modbus RTU meters on one simulated RS-485 bus (a pymodbus
server on a pty), 4 on S0 pulse meters and 4 on BTHome plugs (two of them air conditioners with a GPIO contact for
their mode) — syncing to `koto-cloud serve` through a real Mosquitto. The gateway runs its production defaults
(`hold_s` 900, `checkpoint_s` 300, `interim_s` 900) on a compressed clock (`--speed`): the cadences that run on the
daemon's clock (interims, holds, checkpoints, the hourly summary, housekeeping) run compressed with it, so a
simulated day does a day's records, commits and acks; a few run in real time (the 1 s ticker, the power-trace
writer every 2 minutes), so they run 60 times less often per simulated hour than on a Pi.

Each sample (every simulated hour; `--sample-min` to change) reads from /proc of the gateway process: its resident
memory (VmRSS), open file descriptors, threads, and its asyncio task count (the child's test hook writes it to
`probe.json`: the daemon's status snapshot does not carry it), and how full the power rings are (below).

Warm-up. Besides imports, the sessions and the first interims, the daemon keeps each appliance's last 21,600 power
readings in a ring (gateway/power_log.py: 6 h at 1 Hz, for `koto profile`) and writes every ring out as CSV every
2 minutes. The arrays are allocated at the start, but the writer's transient objects grow with the ring's fill, and
the allocator keeps its high-water mark: measured alone, 16 rings filling at 1 Hz raise RSS by about 0.65 MiB per
hour, about 4 MiB in all, then stay flat. At 60x the one simulated RS-485 bus cannot poll eight meters once a
simulated second on this shared machine (a reading every 10 s or so), so the Modbus rings take far more than a
simulated day to fill. So:
- fds, threads, tasks are judged after a 2 h warm-up (half the run when shorter): flat when the median of the last
  third of the samples is at most 2 above the median of the first third. Medians, not the fitted slope (printed
  too, with the maximum), because a sample may catch a burst in flight (a batch of publishes, an append thread) or
  a gap between tasks, and one such outlier tilts a line through a dozen points;
- RSS is judged on the second half of a run of at least 12 simulated hours: flat when the least-squares slope is
  below `--rss-kib-per-h` KiB per simulated hour (default 64, 1.5 MiB a day); shorter runs (`--quick`) report it
  without judging. Each sample also prints how full the least full power ring of a Modbus or S0 appliance is (read
  off the trace files; BTHome plugs advertise every 10 s, so theirs would take 60 h and are left out): while a
  ring fills, part of the growth is the ring's, by design.
Samples are taken 7.5 simulated minutes past each hour (or sample interval), away from the moments when every
appliance's 15-minute interim, the hourly summary and the housekeeping fall together.
Exit 0 when flat. Timing figures on a shared machine are noisy; memory and counts are not timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.power_log import RING_READINGS, trace_name  # noqa: E402
from tests.chaos.rig import Rig, RigConfig, mixed  # noqa: E402


@dataclass
class Sample:
    sim_h: float
    rss_kib: int
    fds: int
    threads: int
    tasks: int
    records: int
    ring_fill: float  # the least full power ring of the Modbus and S0 appliances, 0..1
    sqlite_kib: int = 0  # SQLite's own heap (page caches, statements): sqlite3_memory_used() in the child
    malloc_used_kib: int = 0  # glibc malloc bytes in use, main arena + mmapped chunks (mallinfo2)


@dataclass
class Soak:
    speed: float
    hours: float
    samples: list[Sample] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)
    real_s: float = 0.0


def proc_sample(pid: int) -> tuple[int, int, int]:
    """(VmRSS KiB, open fds, threads) of process `pid`."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


async def soak(folder: Path, *, hours: float, speed: float, sample_h: float, appliances: int) -> Soak:
    cfg = RigConfig(mixed(appliances), speed=speed, interim_s=900, probe_every_s=0.5, stale_after_s=600.0)
    out = Soak(speed, hours)
    t0 = time.monotonic()
    async with Rig(folder, cfg) as rig:
        next_h = 0.0
        while next_h <= hours + 1e-9:
            at_h = min(next_h + min(SAMPLE_OFFSET_H, sample_h / 2), hours) if next_h > 0 else 0.0
            wait = (at_h * 3600 - rig.sim_t()) / speed
            if wait > 0:
                await asyncio.sleep(wait)
            pid = rig.gateway_pid()
            probe = json.loads((rig.control / "probe.json").read_text()) if (rig.control / "probe.json").exists() \
                else {}
            if pid is None or probe.get("pid") != pid:
                await asyncio.sleep(0.5)  # just (re)started: its probe is not written yet
                continue
            rss, fds, threads = proc_sample(pid)
            s = Sample(rig.sim_t() / 3600, rss, fds, threads, int(probe["tasks"]), rig.cloud_max_seq(),
                       ring_fill(rig), int(probe.get("sqlite_kib", 0)), int(probe.get("malloc_used_kib", 0)))
            out.samples.append(s)
            print(f"  {s.sim_h:6.2f} h  RSS {s.rss_kib / 1024:6.1f} MiB  fds {s.fds:3d}  threads {s.threads:3d}  "
                  f"tasks {s.tasks:3d}  power rings {s.ring_fill:4.0%}  records at the cloud {s.records}  "
                  f"sqlite {s.sqlite_kib} KiB  malloc {s.malloc_used_kib} KiB", flush=True)
            next_h += sample_h
        out.restarts = list(rig.gateway_exits)
    out.real_s = time.monotonic() - t0
    return out


SAMPLE_OFFSET_H = 0.125  # 7.5 simulated minutes past the hour


def ring_fill(rig: Rig) -> float:
    """How full the least full power ring of a Modbus or S0 appliance is, read off the trace files the daemon
    writes every 2 minutes into its runtime folder (one line per reading). BTHome plugs advertise every 10 s, so
    their rings (60 h of adverts) never fill in a day; they are left out."""
    fills = []
    for a in rig.cfg.appliances:
        if a.kind == "ble":
            continue
        path = rig.folder / "run" / trace_name(a.id)
        lines = sum(1 for line in path.open() if line[:1].isdigit()) if path.exists() else 0
        fills.append(min(1.0, lines / RING_READINGS))
    return min(fills, default=1.0)


WARMUP_H = 2.0
RSS_MIN_HOURS = 12.0


def verdict(r: Soak, *, warmup_h: float, rss_kib_per_h: float) -> tuple[bool, dict[str, object]]:
    after = [s for s in r.samples if s.sim_h >= warmup_h - 1e-6] or r.samples
    late = [s for s in r.samples if s.sim_h >= r.hours / 2 - 1e-6]
    judge_rss = r.hours >= RSS_MIN_HOURS and len(late) >= 4
    figures: dict[str, object] = {
        "sim_hours": round(r.samples[-1].sim_h, 2) if r.samples else 0, "speed": r.speed, "real_s": round(r.real_s),
        "samples": len(r.samples), "warmup_h": warmup_h, "unexpected_exits": r.restarts,
        "records_at_cloud": r.samples[-1].records if r.samples else 0,
    }
    ok = bool(r.samples) and not r.restarts
    figures["ring_fill_last"] = round(r.samples[-1].ring_fill, 3) if r.samples else 0.0
    for name in ("rss_kib", "fds", "threads", "tasks"):
        base = late if name == "rss_kib" and judge_rss else after
        ys = [float(getattr(s, name)) for s in base]
        k = slope([s.sim_h for s in base], ys)
        figures[f"{name}_first"] = int(ys[0]) if ys else 0
        figures[f"{name}_last"] = int(ys[-1]) if ys else 0
        figures[f"{name}_slope_per_h"] = round(k, 3)
        if name == "rss_kib":
            flat = k < rss_kib_per_h or not judge_rss
        else:
            third = max(1, len(ys) // 3)
            rise = statistics.median(ys[-third:]) - statistics.median(ys[:third]) if ys else 0.0
            figures[f"{name}_max"] = int(max(ys)) if ys else 0
            flat = rise <= 2
        figures[f"{name}_flat"] = flat
        ok = ok and flat
    for name in ("sqlite_kib", "malloc_used_kib"):  # attribution of the RSS slope, not judged
        base = late if judge_rss else after
        ys = [float(getattr(s, name)) for s in base]
        figures[f"{name}_slope_per_h"] = round(slope([s.sim_h for s in base], ys), 3)
    figures["rss_judged"] = judge_rss
    figures["flat"] = ok
    return ok, figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    ap.add_argument("--speed", type=float, default=60.0, help="time compression (default 60x)")
    ap.add_argument("--sample-min", type=float, default=60.0, help="simulated minutes between samples (default 60)")
    ap.add_argument("--appliances", type=int, default=16)
    ap.add_argument("--rss-kib-per-h", type=float, default=64.0, help="largest RSS slope called flat (KiB/h)")
    ap.add_argument("--quick", action="store_true", help="2 simulated hours, a sample every 15 simulated minutes")
    ap.add_argument("--json", action="store_true", help="print one JSON object of figures as the last line")
    ap.add_argument("--dir", default=None, help="keep the run's files here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.hours, args.sample_min = 2.0, 15.0
    warmup_h = min(WARMUP_H, args.hours / 2)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="koto-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.appliances} appliances, {args.hours:g} simulated hours at {args.speed:g}x "
          f"(about {args.hours * 3600 / args.speed / 60:.0f} min), in {folder}", flush=True)
    r = asyncio.run(soak(folder, hours=args.hours, speed=args.speed, sample_h=args.sample_min / 60,
                         appliances=args.appliances))
    ok, fig = verdict(r, warmup_h=warmup_h, rss_kib_per_h=args.rss_kib_per_h)
    print()
    print(f"after {warmup_h:g} h of warm-up, least-squares slope per simulated hour:")
    if fig["rss_judged"]:
        rss = (f"{'flat' if fig['rss_kib_flat'] else 'GROWING'} over the second half; the least full power ring "
               f"was {fig['ring_fill_last']:.0%} full at the end")
    else:
        rss = f"not judged: a run under {RSS_MIN_HOURS:g} simulated hours is all warm-up for memory"
    print(f"  RSS      {fig['rss_kib_first']} -> {fig['rss_kib_last']} KiB, {fig['rss_kib_slope_per_h']:+} KiB/h "
          f"(flat below {args.rss_kib_per_h:g}): {rss}")
    print(f"  of which SQLite's heap {fig['sqlite_kib_slope_per_h']:+} KiB/h, malloc in use "
          f"{fig['malloc_used_kib_slope_per_h']:+} KiB/h (main arena; Python objects live in pymalloc's own arenas)")
    for name in ("fds", "threads", "tasks"):
        print(f"  {name:<8} {fig[f'{name}_first']} -> {fig[f'{name}_last']} (max {fig[f'{name}_max']}), "
              f"{fig[f'{name}_slope_per_h']:+}/h: "
              f"{'flat' if fig[f'{name}_flat'] else 'GROWING'}")
    if r.restarts:
        print(f"  the gateway exited by itself: {r.restarts}")
    print(f"VERDICT: {'FLAT' if ok else 'NOT FLAT'} ({fig['sim_hours']} simulated hours in {fig['real_s']} s, "
          f"{fig['records_at_cloud']} records at the cloud)")
    if args.json:
        print(json.dumps(fig, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
