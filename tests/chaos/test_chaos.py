"""Every fault of the chaos list once, at seeded random moments, on the whole system: nothing lost, nothing doubled.

The real `koto run` (child process) meters eight simulated appliances on all three driver kinds — Modbus RTU meters
on a pty, S0 pulse meters and a GPIO contact on gpiozero's MockFactory, BTHome plugs through the BLE driver — and
syncs to the reference receiver over a real Mosquitto. In turn: SIGKILL of the gateway, a broker restart, a receiver
restart, a full disk (its state folder is a 32 MiB tmpfs), the serial adapter pulled and plugged back, a BLE plug
gone silent, the wall clock jumping two hours, and a power cut (the ledger put back to its last committed image).
Retention prunes all along (a simulated minute of it, every 20 simulated seconds), and nothing unacked may leave.
The second test runs the faults that touch the cloud with the receiver on PostgreSQL (a private server).
The full size, several rounds with a fresh seed, is `make chaos` (bench/chaos.py); see docs/testing.md.

KOTO_CHAOS_SEED=N reruns one schedule (the seed is printed at the start of each run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.faults import FAULTS
from tests.chaos.run import chaos_config, run_chaos

SEED = int(os.environ.get("KOTO_CHAOS_SEED", "20261205"))
PG_FAULTS = ("receiver_restart", "broker_restart", "gateway_sigkill")


@pytest.mark.slow
async def test_every_fault_once_then_every_record_is_at_the_cloud_once_verified_and_energy_conserved(
        tmp_path: Path) -> None:
    root = os.geteuid() == 0  # a size-limited tmpfs for the full disk needs root (this machine runs tests so)
    run = await run_chaos(tmp_path, seed=SEED, rounds=1, cfg=chaos_config(tmpfs_size="32m" if root else ""))
    print(run.table())
    ran = sorted(o.fault for o in run.outcomes)
    assert ran == sorted(f for f in FAULTS if root or f != "full_disk"), ran
    assert run.problems == [], "\n".join(run.log)
    assert run.exactly_once and run.identical_bytes
    register_sources = {s for s in run.energy}
    assert {"modbus-0-meter", "ble-3-meter"} <= register_sources, register_sources
    assert all(o.recovered_s is not None for o in run.outcomes), run.table()
    assert len(run.pruned_logged) >= 3 and run.anchor > 1, (run.pruned_logged, run.anchor)
    assert any(p.unacked > 0 for p in run.prunes), "no prune ran while a fault held records unacked"
    assert run.koto_verify.startswith("ok"), run.koto_verify


@pytest.mark.slow
async def test_the_receiver_on_postgresql_through_its_own_restarts_a_broker_restart_and_a_gateway_kill(
        tmp_path: Path) -> None:
    run = await run_chaos(tmp_path, seed=SEED, rounds=1, cfg=chaos_config(tmpfs_size="", store="postgres"),
                          only=PG_FAULTS)
    print(run.table())
    assert sorted(o.fault for o in run.outcomes) == sorted(PG_FAULTS)
    assert run.problems == [], "\n".join(run.log)
    assert run.exactly_once and run.identical_bytes and run.energy
    assert run.pruned_logged and run.anchor > 1, (run.pruned_logged, run.anchor)
