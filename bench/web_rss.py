"""The status page's memory cost: the daemon's RSS with the page on against the same daemon with it off.

    python bench/web_rss.py [--seconds 20] [--requests 200] [--limit-mb 10]

Each run starts the household gateway of the browser tests (tests/web/household.py: a washer on a simulated
SDM120, a locked kettle on S0 pins, a spare meter; 29 days of seeded history) as its own process, lets it meter for
`--seconds`, and — with the page on — serves `--requests` page loads and JSON polls spread over that time (the
page's figures are read from the ledger, so its queries and caches are in the figure). Then it reads the child's
VmRSS and VmHWM (peak) from /proc. Prints both runs and the difference; exits 1 if the page costs more than
`--limit-mb` (issue 13's budget: 10 MB). Timing on a shared machine is noisy; RSS is steadier but not exact.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def run(web: bool, seconds: float, requests: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="koto-web-rss-") as folder:
        port = free_port()
        cmd = [sys.executable, "-m", "tests.web.household", "--folder", folder, "--port", str(port), "--history"]
        if not web:
            cmd.append("--no-web")
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            if not ready:
                raise SystemExit("the household gateway did not start")
            info = json.loads(proc.stdout.readline())
            end = time.monotonic() + seconds
            done = 0
            while time.monotonic() < end:
                if web and done < requests:
                    path = "/" if done % 4 == 0 else "/api/live"
                    with urllib.request.urlopen(info["url"] + path, timeout=10) as r:
                        r.read()
                    done += 1
                    time.sleep(max(0.0, seconds / max(requests, 1) * 0.9))
                else:
                    time.sleep(0.2)
            kb = proc_kb(proc.pid)
            kb["requests"] = done
            return kb
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--limit-mb", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    args = p.parse_args(argv)
    off = run(False, args.seconds, 0)
    on = run(True, args.seconds, args.requests)
    diff_mb = (on["VmRSS"] - off["VmRSS"]) / 1024
    print(f"page off: RSS {off['VmRSS'] / 1024:.1f} MB (peak {off['VmHWM'] / 1024:.1f} MB)")
    print(f"page on:  RSS {on['VmRSS'] / 1024:.1f} MB (peak {on['VmHWM'] / 1024:.1f} MB) after {on['requests']} "
          "requests")
    print(f"difference: {diff_mb:+.1f} MB (peak {(on['VmHWM'] - off['VmHWM']) / 1024:+.1f} MB); budget "
          f"{args.limit_mb:g} MB: {'ok' if diff_mb <= args.limit_mb else 'OVER'}")
    if args.json:
        from bench.figures import Figure, emit

        emit("web_rss", [Figure("daemon RSS with the status page on", on["VmRSS"] / 1024, "MB",
                                baseline=off["VmRSS"] / 1024, baseline_name="the same daemon, page off",
                                target=f"<= +{args.limit_mb:g} MB")], argv=["--json"])
    return 0 if diff_mb <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
