"""The full chaos run: 20 gateway SIGKILLs and 5 broker restarts across a 10,000-record run.

    .venv/bin/python -m bench.chaos                   # plain MQTT
    .venv/bin/python -m bench.chaos --tls             # TLS with client certificates and the per-gateway ACL

The gateway is tests/support/gw_child.py in a child process (appending records at a steady rate and running Sync);
the peer is the reference receiver (cloud/, SQLite). Each kill and restart lands while records are flowing (events
fire at evenly spaced fractions of the records stored). Done when the receiver holds every seq exactly once, the
chain and signatures verify, and the energy is conserved (the sum of energy_mwh equals the register's last minus
first reading), which the script prints.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.support.gw_child import chaos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--broker-restarts", type=int, default=5)
    p.add_argument("--rate", type=float, default=400.0, help="records appended per second by the gateway")
    p.add_argument("--broker-down", type=float, default=1.0, help="seconds the broker stays down per restart")
    p.add_argument("--tls", action="store_true")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="koto-chaos-"))
    r = asyncio.run(chaos(folder, total=args.records, gateway_kills=args.kills, broker_restarts=args.broker_restarts,
                          rate=args.rate, tls=args.tls, broker_down_s=args.broker_down))
    for line in r.log:
        print("  " + line)
    print(f"chaos ({'TLS' if args.tls else 'plain'}): {r.total} records, {r.gateway_kills} gateway SIGKILLs, "
          f"{r.broker_restarts} broker restarts, {r.seconds:.1f} s")
    print(f"  receiver stored {r.stored}, every seq exactly once: {r.exactly_once}")
    print(f"  chain and signatures verify: {not r.chain_problems} {r.chain_problems[:3]}")
    print(f"  energy: sum of energy_mwh {r.energy_mwh} = register delta {r.register_delta_mwh}: "
          f"{r.energy_mwh == r.register_delta_mwh}")
    print(f"RESULT: {'PASS' if r.ok else 'FAIL'}")
    raise SystemExit(0 if r.ok else 1)


if __name__ == "__main__":
    main()
