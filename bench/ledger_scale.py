"""The support tools on a big ledger: `koto usage` and `koto verify` on 1,000,000 records, beside plain baselines.

    .venv/bin/python bench/ledger_scale.py [--records 1000000] [--state /tmp/koto-ledger-1000000] [--json]

A year-like ledger is generated once into `--state` (8 appliances, washer-like function records with registers,
tariff and cost, a cycle record every 8, records spread over 365 days; every record ECDSA-signed by the real
`Ledger.append`) and reused by later runs of the same size. Then, each as a child process so its peak memory (RSS,
from `wait4`) is its own:

- `koto usage` by function, by day and by cycle, then with the filters of a support call (`--since` the last month,
  `--appliance`): wall time and peak RSS, beside the baseline of reading every usage row's columns into Python (what
  `koto usage` did before it aggregated in SQL); `--usage-only` stops there;
- `koto verify`: records/s and peak RSS, beside the baseline of one ECDSA P-256 verification per record on one core
  (what any verifier must at least do), measured in the same run.

Targets (issue 10): usage under 60 MB and 2 s; verify >= 20,000 records/s, with progress shown.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the `metering` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gateway.state import StateDir  # noqa: E402
from metering.ledger import SCHEMA_VERSION, Ledger  # noqa: E402
from metering.records import Draft, RecordKind, TimeStatus, UsageRecord, usage_draft  # noqa: E402

GATEWAY = "gw-bench-1m"
EPOCH = 1_790_000_000
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
APPLIANCES = ("washer", "dryer", "dishwasher", "fridge", "oven", "kettle", "heatpump", "freezer")
FUNCTIONS = ("fill", "heat", "wash", "spin")


def drafts(start: int, n: int, total: int) -> list[Draft]:
    """Records start..start+n of a `total`-record year: 8 appliances in turn, each closing a use every 8 records."""
    out: list[Draft] = []
    step = 365 * 86400 / total
    for i in range(start, start + n):
        app = APPLIANCES[i % len(APPLIANCES)]
        t = T0 + i * step
        mono = int(i * step * 1e9)
        common = dict(appliance=app, source=f"{app}.meter", t_end_mono_ns=mono, t_end_wall=t, boot_id="b" * 36,
                      tariff_id="household-2026", tariff_version=3, currency="EUR", time_status=TimeStatus.SYNCED)
        cycle = f"{app}-{i // 64}"  # an appliance's every 8th record (i % 8 picks the appliance) ends a use
        if i % 64 >= 56:
            rec = UsageRecord(kind=RecordKind.CYCLE, function="", t_start_mono_ns=mono - 3_600_000_000_000,
                              t_start_wall=t - 3600, cycle_id=cycle, uses=1, cycle_energy_mwh=812_000,
                              duration_ms=3_600_000, peak_power_mw=2_150_000, cost_minor=40, **common)
        else:
            e = 95_000 + (i * 7919) % 20_000
            rec = UsageRecord(kind=RecordKind.FUNCTION, function=FUNCTIONS[i % 4],
                              t_start_mono_ns=mono - 60_000_000_000, t_start_wall=t - 60, energy_mwh=e,
                              duration_ms=60_000, cycle_id=cycle, register_start_mwh=i * 100_000,
                              register_end_mwh=i * 100_000 + e, peak_power_mw=2_000_000, cost_minor=e // 3125,
                              **common)
        out.append(usage_draft(rec, f"household-42/{app}"))
    return out


def ensure_ledger(state: Path, total: int) -> StateDir:
    sd = StateDir(state)
    if sd.ledger.exists():
        with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=None) as ledger:
            size_ok = ledger.head()[0] == total
        if not size_ok:
            raise SystemExit(f"{sd.ledger} holds another size; remove {state} or pass another --state")
        migrate(sd)
        return sd
    sd.provision()
    t0 = time.monotonic()
    with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=sd.private_key(), epoch=EPOCH) as ledger:
        for start in range(0, total, 1000):
            ledger.append(drafts(start, min(1000, total - start), total))
            if start % 50_000 == 0:
                done = start + min(1000, total - start)
                print(f"  generating: {done:,} of {total:,} records ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
        ledger.wal_checkpoint()
    return sd


def migrate(sd: StateDir) -> None:
    """A ledger cached by an older Koto (schema 1) is migrated in place by a writer open, as the daemon's first start
    after an upgrade does; its cost (time, bytes written, WAL included) is printed once."""
    with sqlite3.connect(f"file:{sd.ledger}?mode=ro", uri=True) as conn:
        (version,) = conn.execute("SELECT value FROM kv WHERE key='schema_version'").fetchone()
    if version == str(SCHEMA_VERSION):
        return
    before = _written()
    t0 = time.monotonic()
    with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=sd.private_key()) as ledger:
        ledger.wal_checkpoint()
    print(f"migrated the cached ledger from schema {version} to {SCHEMA_VERSION}: {time.monotonic() - t0:.1f} s, "
          f"{(_written() - before) / 1e6:,.0f} MB written (WAL and checkpoint included)")


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def child(args: list[str]) -> tuple[float, float, str, int]:
    """Run `args`; return (wall seconds, peak RSS in MiB, the last 4 KB of stdout, its number of lines), and keep its
    CPU seconds (user + system, both threads) in `CPU[0]`: on a shared machine the wall time is the load's. The output
    is counted as it comes, never held: a child's peak RSS starts from this process's size when it forks, so a
    bench that had kept `--by cycle`'s 15 MB of lines would add them to every later child's figure."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    tail, lines = b"", 0
    while chunk := proc.stdout.read(1 << 16):
        lines += chunk.count(b"\n")
        tail = (tail + chunk)[-4096:]
    out = tail.decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    CPU[0] = usage.ru_utime + usage.ru_stime
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out, lines


CPU = [0.0]

BASELINE_USAGE = """
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = conn.execute("SELECT appliance, function, cycle_id, t_end_ms, kind, energy_mwh, duration_ms, uses, "
                    "cost_minor, currency FROM records WHERE type='io.koto.usage.v1' ORDER BY seq").fetchall()
print(len(rows))
"""

BASELINE_VERIFY = """
import sqlite3, sys, time, base64, hashlib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
key = serialization.load_pem_public_key(open(sys.argv[2], "rb").read())
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = conn.execute("SELECT hash, body FROM records ORDER BY seq LIMIT 20000").fetchall()
alg = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
sigs = [base64.b64decode(b[b.rindex(b'"sig":"') + 7:].split(b'"', 1)[0]) for _, b in rows]
t0 = time.perf_counter()
for (h, _), sig in zip(rows, sigs):
    try:
        key.verify(sig, bytes.fromhex(h), alg)
    except Exception:
        pass
print(len(rows) / (time.perf_counter() - t0))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--state", type=Path, default=None, help="state folder to generate into or reuse")
    p.add_argument("--usage-only", action="store_true", help="measure `koto usage` only, not `koto verify`")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    args = p.parse_args()
    state = args.state or Path(f"/tmp/koto-ledger-{args.records}")
    sd = ensure_ledger(state, args.records)
    koto = [sys.executable, "-m", "gateway.cli"]
    size_mb = sd.ledger.stat().st_size / 1e6
    figures: list[tuple[str, float, str, float | None, str, str]] = []
    print(f"ledger: {args.records:,} records, {size_mb:,.0f} MB ({sd.ledger})")
    base_wall, base_rss, _, _ = child([sys.executable, "-c", BASELINE_USAGE, str(sd.ledger)])
    print(f"usage baseline (every usage row into Python): {base_wall:6.2f} s ({CPU[0]:5.2f} CPU s), "
          f"{base_rss:6.1f} MiB peak RSS; load average {os.getloadavg()[0]:.2f}")
    # The whole year per mode, then the filters a support call uses: the last month, one appliance.
    month = time.strftime("%Y-%m-%d", time.gmtime(T0 + 334 * 86400))
    for extra in (["--by", "function"], ["--by", "day"], ["--by", "cycle"], ["--by", "function", "--since", month],
                  ["--by", "day", "--appliance", "washer"], ["--by", "cycle", "--since", month]):
        wall, rss, _, lines = child([*koto, "usage", "--state-dir", str(sd.root), *extra])
        what = " ".join(extra)
        print(f"koto usage {what:38s}: {wall:6.2f} s ({CPU[0]:5.2f} CPU s), {rss:5.1f} MiB peak RSS ({lines:,} lines; "
              f"target < 2 s, < 60 MB)")
        figures.append((f"koto usage {what} ({args.records:,} records), time", wall, "s", base_wall,
                        "every usage row read into Python", "< 2 s"))
        figures.append((f"koto usage {what} ({args.records:,} records), peak RSS", rss, "MiB", base_rss,
                        "every usage row read into Python", "< 60 MB"))
    if args.usage_only:
        return
    _, _, out, _ = child([sys.executable, "-c", BASELINE_VERIFY, str(sd.ledger), str(sd.public_key_path)])
    base_rate = float(out.strip())
    wall, rss, out, _ = child([*koto, "verify", "--state-dir", str(sd.root)])
    rate = args.records / wall
    cores = os.cpu_count() or 1
    print(f"koto verify: {rate:,.0f} records/s ({wall:.1f} s, {rss:.1f} MiB peak RSS, {cores} cores); "
          f"baseline one ECDSA verify per record on one core: {base_rate:,.0f}/s; ratio {rate / base_rate:.2f}x "
          f"(target >= 20,000/s; the ECDSA alone on every core would give {base_rate * cores:,.0f}/s)")
    print(f"  {out.strip()}")
    figures.append((f"koto verify ({args.records:,} records)", rate, "records/s", base_rate,
                    "one ECDSA P-256 verify per record, one core, nothing else", ">= 20,000/s"))
    if args.json:
        from bench.figures import Figure, emit

        emit("ledger_scale", [Figure(n, v, u, baseline=b, baseline_name=bn, target=t)
                              for n, v, u, b, bn, t in figures], argv=["--json"])


if __name__ == "__main__":
    main()
