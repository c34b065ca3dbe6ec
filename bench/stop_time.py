"""How long `koto run` takes from SIGTERM to exit, in the cases the stop deadline is for (issue 10, item 3).

    .venv/bin/python bench/stop_time.py [--runs 3]

Each run starts a `koto run` child (with the misbehaving test drivers of tests/support/bad_drivers.py registered),
lets it meter for 2 s, sends SIGTERM and times the exit. The cases:
- `clean`: one healthy source;
- `close hangs`: a source whose close never returns (it is left behind once the ledger is closed);
- `writer locked`: the ledger's write lock held by another connection, so no commit can end (the deadline ends it).
`stop_timeout_s` is 10 s; systemd's TimeoutStopSec is 20 s. Prints the median and the exit status of each case.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    "clean": 'watts = 2000',
    "close hangs": 'watts = 2000\nhang_close = true',
    "writer locked": 'watts = 2000',
}


def one(case: str, folder: Path) -> tuple[float, int]:
    from gateway.cli import main as koto
    from metering.ledger.lease import reader_lease

    cfg = folder / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "bench-gw"
state_dir = "{folder / 'state'}"
batch_ms = 50
checkpoint_s = 0.2

[[appliance]]
id = "kettle"
profile = "kettle"
[appliance.sources.k]
driver = "flaky"
{CASES[case]}
""")
    assert koto(["provision", "--state-dir", str(folder / "state")]) == 0
    with (folder / "koto.log").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.koto_child", "run", "--config", str(cfg)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(2.0)
    db, lease = None, None
    if case == "writer locked":
        lease = reader_lease(folder / "state" / "ledger.db")  # the daemon lends its ledger within a second
        db = sqlite3.connect(folder / "state" / "ledger.db", isolation_level=None, timeout=10)
        db.execute("BEGIN EXCLUSIVE")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    took = time.monotonic() - t0
    if db is not None:
        db.execute("ROLLBACK")
        db.close()
    if lease is not None:
        lease.release()
    return took, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    import contextlib
    import io

    for case in CASES:
        times, codes = [], set()
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as d, contextlib.redirect_stderr(io.StringIO()), \
                    contextlib.redirect_stdout(io.StringIO()):
                took, code = one(case, Path(d))
            times.append(took)
            codes.add(code)
        print(f"{case:14s} SIGTERM -> exit: median {statistics.median(times):5.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}), exit status {sorted(codes)}")


if __name__ == "__main__":
    main()
