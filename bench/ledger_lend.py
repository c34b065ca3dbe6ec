"""What lending the daemon's ledger to a reader costs: bytes written, the appends' wait, and the reader's wait.

    .venv/bin/python -m bench.ledger_lend [--dir /var/tmp] [--commits 40] [--visits 5]

The daemon holds its ledger exclusive (no -shm on the SD card) and lends it when a reader in another process takes
a lease (docs/ledger.md, "The daemon owns its ledger; readers borrow it"). A writer here plays the daemon: it opens
the ledger `exclusive=True`, commits `--commits` transactions of five records (about a day's commits with the
defaults, bench/sd_writes.py), and looks once a second (`serve_due()`, then `serve_readers()` when it is due), as
the lending task does.
A reader in a process of its own (`Ledger.open(key=None)` and one query, as `koto usage` starts) visits `--visits`
times. Printed: this process's `write_bytes` for each lend and each reclaim (their WAL checkpoints), how long each
held the ledger's lock (what an append waits), and the reader's time from start to its answer, beside the same
reader against a writer that does not hold its file exclusive (the baseline: the daemon until 2026-12-06). And
what a visit costs the SD card beyond the checkpoint its pages would have had anyway: two runs of the same commits,
with a visit in the middle and without, each to its close (which checkpoints), the difference of their bytes.
Run it on a disk-backed directory: on tmpfs nothing reaches a block device.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from koto.signing import generate_key
from metering.ledger import Ledger
from metering.ledger.lease import reader_lease
from metering.records import LIFECYCLE_TYPE, Draft, TimeStatus

READER = """
import sys, time
t0 = time.monotonic()
from metering.ledger import Ledger
from metering.ledger.lease import reader_lease
with Ledger.open(sys.argv[1], gateway_id="gw-lend", key=None) as ledger:
    ledger.head()
print(time.monotonic() - t0)
"""


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def drafts(n: int, at: int) -> list[Draft]:
    now = time.time()
    return [Draft(LIFECYCLE_TYPE, "urn:koto:gw:gw-lend", now, TimeStatus.SYNCED, {"event": "start", "n": at + i})
            for i in range(n)]


def reader(db: Path) -> float:
    """Seconds from a reader process's start (after its imports' first line) to its answer."""
    out = subprocess.run([sys.executable, "-c", READER, str(db)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60)
    return float(out.stdout)


def run(folder: Path, commits: int, visits: int, exclusive: bool) -> tuple[list[float], list[tuple[str, int, float]]]:
    db = folder / ("exclusive" if exclusive else "normal") / "ledger.db"
    serves: list[tuple[str, int, float]] = []  # (what, bytes written, seconds under the lock)
    waits: list[float] = []
    with Ledger.open(db, gateway_id="gw-lend", key=generate_key(), exclusive=exclusive) as ledger:
        stop = threading.Event()
        lock = threading.Lock()

        def lending() -> None:
            while not stop.wait(1.0):
                with lock:
                    before, t = write_bytes(), time.monotonic()
                    said = ledger.serve_readers() if ledger.serve_due() else None  # as the lending task looks
                    if said is not None:
                        serves.append((said, write_bytes() - before, time.monotonic() - t))

        lender = threading.Thread(target=lending, daemon=True)
        lender.start()
        try:
            for visit in range(visits):
                with lock:  # the day's commits go into the WAL between two visits
                    for c in range(commits):
                        ledger.append(drafts(5, (visit * commits + c) * 5))
                waits.append(reader(db))
                time.sleep(2.5)  # the reclaim comes within a second of the reader's leaving
        finally:
            stop.set()
            lender.join()
    return waits, serves


def day(db: Path, commits: int, *, lend: bool) -> int:
    """Bytes written by `2 * commits` commits and the close's checkpoint, with a reader's visit between the halves
    (a lend and a reclaim: two checkpoints) or without: their difference is what the visit cost beyond the
    checkpoint those pages would have had anyway."""
    before = write_bytes()
    with Ledger.open(db, gateway_id="gw-lend", key=generate_key(), exclusive=True) as ledger:
        for half in range(2):
            for c in range(commits):
                ledger.append(drafts(5, (half * commits + c) * 5))
            if lend and half == 0:
                with reader_lease(db):
                    assert ledger.serve_readers() == "lent"
                    with Ledger.open(db, gateway_id="gw-lend", key=None) as visitor:
                        visitor.head()
                assert ledger.serve_readers() == "reclaimed"
    return write_bytes() - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/var/tmp", help="a disk-backed directory (default /var/tmp)")
    p.add_argument("--commits", type=int, default=40, help="commits of 5 records between two visits (default 40)")
    p.add_argument("--visits", type=int, default=5)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="koto-lend-", dir=args.dir))
    marginal = [day(folder / f"with-{i}" / "ledger.db", args.commits, lend=True)
                - day(folder / f"without-{i}" / "ledger.db", args.commits, lend=False) for i in range(args.visits)]
    base_waits, _ = run(folder, args.commits, args.visits, exclusive=False)
    waits, serves = run(folder, args.commits, args.visits, exclusive=True)
    for what in ("lent", "reclaimed"):
        done = [s for s in serves if s[0] == what]
        if not done:
            print(f"{what}: none (the lender never did it)")
            continue
        print(f"{what}: {len(done)} times, written {statistics.median(b for _, b, _ in done) / 1024:.1f} KiB "
              f"(median; max {max(b for _, b, _ in done) / 1024:.1f}), the lock held "
              f"{statistics.median(s for _, _, s in done) * 1000:.1f} ms (median; max "
              f"{max(s for _, _, s in done) * 1000:.1f})")
    print(f"a visit's cost beyond the checkpoints the pages would have had anyway: "
          f"{statistics.median(marginal) / 1024:.1f} KiB (median of {len(marginal)}; "
          f"{min(marginal) / 1024:.1f} to {max(marginal) / 1024:.1f})")
    print(f"a reader's start to its answer: {statistics.median(waits) * 1000:.0f} ms (median; max "
          f"{max(waits) * 1000:.0f}) against the daemon's own ledger; {statistics.median(base_waits) * 1000:.0f} ms "
          f"(median; max {max(base_waits) * 1000:.0f}) against a writer that does not hold its file exclusive")
    print(f"({args.commits} commits of 5 records between visits, {args.visits} visits)")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
