"""What the ledger connection's page cache costs the daemon: SQLite's heap and the process's RSS after a daemon-like
load, with the ledger's `cache_size` (metering/ledger/store.py CACHE_KIB) beside SQLite's default of 2,000 KiB.

    .venv/bin/python -m bench.ledger_cache [--records 20000] [--runs 2]

Each run is a fresh child process: it makes a ledger in /var/tmp, appends `--records` records (bench/ledger_scale's
year of eight appliances) in commits of 100 as the daemon's batches do, reading the unacked window, the chain head
and the checkpoints after each commit (what the sync and the meter loop read), then re-reads the newest 2,000
records twenty times (resends). Printed: SQLite's own heap (`sqlite3_memory_used()`, page cache and statements),
VmRSS, and the CPU seconds of the appends and of the re-reads. The daemon's cache fills as its ledger grows, over
hours; `bench/daemon_cost.py` runs for a minute on a new ledger, so it cannot show this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import ctypes, os, shutil, sys, tempfile, time
from pathlib import Path
from metering.ledger import store
store.CACHE_KIB = int(sys.argv[1])
from bench.ledger_scale import EPOCH, GATEWAY, drafts
from gateway.state import StateDir
from metering.ledger import Ledger
sqlite = ctypes.CDLL("libsqlite3.so.0")
sqlite.sqlite3_memory_used.restype = ctypes.c_int64
n = int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="koto-cache-", dir="/var/tmp"))
try:
    sd = StateDir(work / "s")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=sd.private_key(), epoch=EPOCH) as ledger:
        c0 = time.process_time()
        for start in range(0, n, 100):
            ledger.append(drafts(start, 100, n))
            ledger.unacked(0, 50)
            ledger.head()
            ledger.checkpoints()
        c1 = time.process_time()
        for _ in range(20):
            for _r in ledger.iter_records(max(1, n - 2000)):
                pass
        c2 = time.process_time()
        rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
        print(sqlite.sqlite3_memory_used() // 1024, rss, c1 - c0, c2 - c1, os.path.getsize(sd.ledger))
finally:
    shutil.rmtree(work)
"""


def run(cache_kib: int, records: int) -> tuple[int, int, float, float, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_kib), str(records)], cwd=REPO, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2",
                                                              "PATH": "/usr/bin:/bin"})
    heap, rss, appends, rereads, size = out.stdout.split()
    return int(heap), int(rss), float(appends), float(rereads), int(size)


def main(argv: list[str] | None = None) -> int:
    from metering.ledger.store import CACHE_KIB

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=2, help="alternating pairs")
    a = ap.parse_args(argv)
    print(f"ledger page cache, {a.records:,} records appended in commits of 100, then the newest 2,000 re-read 20x; "
          f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for _ in range(a.runs):
        for name, kib in (("SQLite's default", 2000), ("the ledger's", CACHE_KIB)):
            heap, rss, appends, rereads, size = run(kib, a.records)
            print(f"  cache_size -{kib:<5} ({name}): SQLite heap {heap:,} KiB, VmRSS {rss / 1024:.1f} MiB, CPU "
                  f"appends {appends:.2f} s, re-reads {rereads:.2f} s (ledger {size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
