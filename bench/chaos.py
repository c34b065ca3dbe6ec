"""The full chaos run (`make chaos`): every fault of the chaos list, several rounds, at seeded random moments.

    .venv/bin/python bench/chaos.py                        # 5 rounds of the 8 faults, a fresh seed (printed)
    .venv/bin/python bench/chaos.py --seed 1234 --rounds 2 # rerun one schedule
    .venv/bin/python bench/chaos.py --json                 # also one JSON object of figures on the last line
    .venv/bin/python bench/chaos.py --store postgres       # the receiver on PostgreSQL (a private server)
    .venv/bin/python bench/chaos.py --synthetic [--tls]    # the older sync-only run (tests/support/gw_child.py)

The whole system on this machine (tests/chaos/rig.py): the real `koto run` in a child process metering simulated
appliances on all three driver kinds (Modbus RTU on a pty, S0 and a GPIO contact on gpiozero's MockFactory, BTHome
plugs through the BLE driver), a real Mosquitto and the reference receiver (`koto-cloud serve`, on SQLite, or with
`--store postgres` on a PostgreSQL server started for the run: tests/support/postgres.py); the
state folder on a size-limited tmpfs (root only; otherwise the full-disk fault is left out and says so). Faults:
gateway SIGKILL, broker restart, receiver restart, full disk, serial adapter pulled, BLE plug silent, wall-clock
jump, power cut (SIGKILL and the ledger put back to its last committed image: docs/testing.md says how and what it
does not model). At the end every seq is at the receiver exactly once and byte-identical, both chains verify,
energy is conserved per register source, and retention, which prunes every 20 simulated seconds all through the
run, pruned nothing unacked (the pruned prefix is at the receiver, `koto verify` proves the rest from the moved
anchor, the pruned plus the kept records conserve energy); then the recovery time of each fault (from its clearing
to the next record acked at the cloud) is printed. Exit 0 when all of it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic(args: argparse.Namespace) -> int:
    from tests.support.gw_child import chaos

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
    _tidy(folder, kept=not r.ok)
    return 0 if r.ok else 1


def full(args: argparse.Namespace) -> int:
    from tests.chaos.run import chaos_config, run_chaos

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="koto-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    if not root:
        print("not root: no size-limited tmpfs for the state folder, so the full-disk fault is left out")
    print(f"chaos: seed {seed}, {args.rounds} rounds, {args.appliances} appliances, receiver on {args.store}, "
          f"in {folder}")
    cfg = chaos_config(appliances=args.appliances, tmpfs_size="32m" if root else "", store=args.store)
    run = asyncio.run(run_chaos(folder, seed=seed, rounds=args.rounds, cfg=cfg, gap_s=(args.gap_min, args.gap_max),
                                duration_s=(args.down_min, args.down_max)))
    print()
    print(run.table())
    print()
    print(run.summary())
    print()
    print(f"records {run.head}, every seq at the cloud exactly once and byte-identical: "
          f"{run.exactly_once and run.identical_bytes}")
    verified = not run.ledger_verify and not run.cloud_problems and not run.alarms
    print(f"chains verify (ledger and receiver), no alarms: {verified}")
    print(f"energy conserved on {len(run.energy)} register sources: {not run.energy_problem}")
    busy = sum(1 for p in run.prunes if p.unacked > 0)
    print(f"retention: {len(run.pruned_logged)} prunes removed {sum(run.pruned_logged)} records "
          f"({run.pruned_energy_mwh} mWh of register energy), {busy} of {len(run.prunes)} seen with records "
          f"unacked; the ledger now starts at seq {run.anchor}; nothing unacked pruned: {not run.retention_problems}")
    print(f"koto verify: {run.koto_verify}")
    print(f"acked through {run.acked_through} of {run.head}; gateway starts {run.starts}, "
          f"exits nobody asked for {run.unexpected_exits}; {run.seconds:.0f} s")
    for p in run.problems:
        print(f"PROBLEM: {p}")
    print(f"RESULT: {'PASS' if run.ok else 'FAIL'} (seed {seed})")
    _tidy(folder, kept=bool(args.dir) or not run.ok)
    if args.json:
        print(json.dumps(run.as_json(), sort_keys=True))
    return 0 if run.ok else 1


def _tidy(folder: Path, *, kept: bool) -> None:
    """A passing run's temporary folder goes (each run left 6 MB in /tmp); a failing run's, or one asked for with
    --dir, stays for reading, and the last line says where."""
    if kept:
        print(f"the run's files (logs, ledger, receiver store) are in {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a fresh one, printed)")
    p.add_argument("--rounds", type=int, default=5, help="how many times each fault is injected")
    p.add_argument("--appliances", type=int, default=8)
    p.add_argument("--gap-min", type=float, default=1.0, help="real seconds between faults, at least")
    p.add_argument("--gap-max", type=float, default=6.0)
    p.add_argument("--down-min", type=float, default=0.5, help="real seconds a lasting fault lasts, at least")
    p.add_argument("--down-max", type=float, default=8.0)
    p.add_argument("--dir", default=None, help="keep the run's files here (default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object of figures as the last line")
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite", help="the receiver's database")
    p.add_argument("--synthetic", action="store_true", help="the older sync-only chaos run (gw_child.py)")
    p.add_argument("--records", type=int, default=10_000, help="--synthetic: records")
    p.add_argument("--kills", type=int, default=20, help="--synthetic: gateway SIGKILLs")
    p.add_argument("--broker-restarts", type=int, default=5, help="--synthetic: broker restarts")
    p.add_argument("--rate", type=float, default=400.0, help="--synthetic: records appended per second")
    p.add_argument("--broker-down", type=float, default=1.0, help="--synthetic: seconds the broker stays down")
    p.add_argument("--tls", action="store_true", help="--synthetic: TLS with client certificates and the ACL")
    args = p.parse_args()
    return synthetic(args) if args.synthetic else full(args)


if __name__ == "__main__":
    sys.exit(main())
