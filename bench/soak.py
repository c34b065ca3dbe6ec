"""The soak: 24 simulated hours of the real gateway with 16 appliances; memory, file descriptors, threads and asyncio
tasks must stay flat.

    .venv/bin/python bench/soak.py                 # `make soak`: 24 simulated hours at 60x (about 25 minutes)
    .venv/bin/python bench/soak.py --quick         # 2 simulated hours, sampled every 15 simulated minutes
    .venv/bin/python bench/soak.py --json          # also one JSON object of figures on the last stdout line

The system is the chaos suite's rig (tests/chaos/rig.py) without the faults: the real `koto run` in a child process
(tests/support/sim_gateway.py) with 16 appliances — 8 on Modbus RTU meters on one simulated RS-485 bus (a pymodbus
server on a pty), 4 on S0 pulse meters and 4 on BTHome plugs (two of them air conditioners with a GPIO contact for
their mode) — syncing to `koto-cloud serve` through a real Mosquitto. The gateway runs its production defaults
(`hold_s` 900, `checkpoint_s` 300, `interim_s` 900) on a compressed clock (`--speed`): every cadence of the daemon
runs compressed with it, so a simulated day does a day's worth of work (records, commits, acks, housekeeping).

Each sample (every simulated hour; `--sample-min` to change) reads from /proc of the gateway process: its resident
memory (VmRSS), open file descriptors, threads, and its asyncio task count (the child's test hook writes it to
`probe.json`: the daemon's status snapshot does not carry it). The first hours are warm-up, and they are long:
besides imports and the first interims, the daemon keeps each appliance's last 6 h of power readings in a ring
(gateway/power_log.py, for `koto profile`) and writes it out as CSV every 2 minutes, so its memory grows, by design
and bounded, until the rings are full after 6 simulated hours; SQLite's page cache also fills to its bound. The
verdict fits a least-squares line to the samples after the warm-up (6 h; half the run when shorter):
- RSS: flat when it grows less than `--rss-kib-per-h` KiB per simulated hour (default 64, i.e. 1.5 MiB a day).
  A run shorter than 12 simulated hours (`--quick`) cannot see past the ring's fill, so it reports RSS but does
  not judge it;
- fds, threads, tasks: flat when their spread after warm-up is at most 2 (an append thread or a reconnect may be
  in flight at a sample) and their fitted growth over the measured span is at most 2.
Exit 0 when flat. Timing figures on a shared machine are noisy; memory and counts are not timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.rig import Rig, RigConfig, mixed  # noqa: E402


@dataclass
class Sample:
    sim_h: float
    rss_kib: int
    fds: int
    threads: int
    tasks: int
    records: int


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
            wait = (next_h * 3600 - rig.sim_t()) / speed
            if wait > 0:
                await asyncio.sleep(wait)
            pid = rig.gateway_pid()
            probe = json.loads((rig.control / "probe.json").read_text()) if (rig.control / "probe.json").exists() \
                else {}
            if pid is None or probe.get("pid") != pid:
                await asyncio.sleep(0.5)  # just (re)started: its probe is not written yet
                continue
            rss, fds, threads = proc_sample(pid)
            s = Sample(rig.sim_t() / 3600, rss, fds, threads, int(probe["tasks"]), rig.cloud_max_seq())
            out.samples.append(s)
            print(f"  {s.sim_h:6.2f} h  RSS {s.rss_kib / 1024:6.1f} MiB  fds {s.fds:3d}  threads {s.threads:3d}  "
                  f"tasks {s.tasks:3d}  records at the cloud {s.records}", flush=True)
            next_h += sample_h
        out.restarts = list(rig.gateway_exits)
    out.real_s = time.monotonic() - t0
    return out


RING_FILL_H = 6.0  # gateway/power_log.py keeps 6 h of readings per appliance


def verdict(r: Soak, *, warmup_h: float, rss_kib_per_h: float) -> tuple[bool, dict[str, object]]:
    after = [s for s in r.samples if s.sim_h >= warmup_h - 1e-6] or r.samples
    xs = [s.sim_h for s in after]
    span_h = xs[-1] - xs[0] if xs else 0.0
    judge_rss = r.hours >= 2 * RING_FILL_H
    figures: dict[str, object] = {
        "sim_hours": round(r.samples[-1].sim_h, 2) if r.samples else 0, "speed": r.speed, "real_s": round(r.real_s),
        "samples": len(r.samples), "warmup_h": warmup_h, "unexpected_exits": r.restarts,
        "records_at_cloud": r.samples[-1].records if r.samples else 0,
    }
    ok = bool(r.samples) and not r.restarts
    for name in ("rss_kib", "fds", "threads", "tasks"):
        ys = [float(getattr(s, name)) for s in after]
        k = slope(xs, ys)
        figures[f"{name}_first"] = int(ys[0]) if ys else 0
        figures[f"{name}_last"] = int(ys[-1]) if ys else 0
        figures[f"{name}_slope_per_h"] = round(k, 3)
        if name == "rss_kib":
            flat = k < rss_kib_per_h or not judge_rss
        else:
            flat = (max(ys) - min(ys) <= 2 if ys else True) and abs(k) * span_h <= 2
        figures[f"{name}_flat"] = flat
        ok = ok and flat
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
    warmup_h = min(RING_FILL_H, args.hours / 2)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="koto-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.appliances} appliances, {args.hours:g} simulated hours at {args.speed:g}x "
          f"(about {args.hours * 3600 / args.speed / 60:.0f} min), in {folder}", flush=True)
    r = asyncio.run(soak(folder, hours=args.hours, speed=args.speed, sample_h=args.sample_min / 60,
                         appliances=args.appliances))
    ok, fig = verdict(r, warmup_h=warmup_h, rss_kib_per_h=args.rss_kib_per_h)
    print()
    print(f"after {warmup_h:g} h of warm-up, least-squares slope per simulated hour:")
    rss = ("flat" if fig["rss_kib_flat"] else "GROWING") if fig["rss_judged"] else \
        f"not judged: a run under {2 * RING_FILL_H:g} h does not get past the power rings' fill"
    print(f"  RSS      {fig['rss_kib_first']} -> {fig['rss_kib_last']} KiB, {fig['rss_kib_slope_per_h']:+} KiB/h "
          f"(flat below {args.rss_kib_per_h:g}): {rss}")
    for name in ("fds", "threads", "tasks"):
        print(f"  {name:<8} {fig[f'{name}_first']} -> {fig[f'{name}_last']}, {fig[f'{name}_slope_per_h']:+}/h: "
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
