"""One chaos run: the rig, a seeded schedule of faults at random moments, then the invariants and the recovery table.

    run = await run_chaos(folder, seed=7, rounds=1)      # tests/chaos/test_chaos.py: every fault once
    python bench/chaos.py --rounds 5                     # `make chaos`: the full size

At the end, with every fault cleared, the gateway is stopped cleanly (SIGTERM) and, if the cloud still lacks
records, started again to send them. Then, read off the gateway's ledger and the receiver's database:
- every seq of the ledger is at the receiver exactly once, with the very bytes the ledger holds;
- the chain and every signature verify, at both ends (the ledger's own verify and the receiver's independent one),
  and the receiver raised no alarm (a fork, a hash mismatch);
- energy is conserved per register source (Modbus meters, BTHome plugs): the partition records chain register to
  register and their energy sums to the register's last minus first reading;
- nothing unacked was pruned: the ledger still holds every seq from 1, and the cloud acked all of it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.store import SqliteStore
from cloud.verify import verify_chain
from gateway.state import StateDir
from metering.ledger import Ledger
from tests.support.ledger_checks import conservation

from .faults import Faults, Outcome, schedule
from .rig import GATEWAY, Rig, RigConfig, mixed


@dataclass
class ChaosRun:
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    head: int = 0
    acked_through: int = 0
    cloud_seqs: list[int] = field(default_factory=list)
    identical_bytes: bool = False
    ledger_verify: str = ""
    cloud_problems: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    energy: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    energy_problem: str = ""
    unexpected_exits: list[int] = field(default_factory=list)
    starts: int = 0
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return self.head > 0 and self.cloud_seqs == list(range(1, self.head + 1))

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.exactly_once:
            missing = sorted(set(range(1, self.head + 1)) - set(self.cloud_seqs))
            out.append(f"the cloud does not hold seq 1..{self.head} exactly once (missing {missing[:10]})")
        if not self.identical_bytes:
            out.append("a record at the cloud differs from the ledger's")
        if self.ledger_verify:
            out.append(f"ledger verify: {self.ledger_verify}")
        out += [f"cloud verify: {p}" for p in self.cloud_problems] + [f"alarm: {a}" for a in self.alarms]
        if self.energy_problem:
            out.append(f"energy: {self.energy_problem}")
        if self.acked_through != self.head:
            out.append(f"acked through {self.acked_through}, head {self.head}")
        out += [f"{o.fault} at {o.at_s:.0f} s: no record acked within the limit" for o in self.outcomes
                if o.recovered_s is None]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        lines = [f"{'fault':<18}{'at s':>8}{'lasted s':>10}{'recovered s':>13}{'total s':>9}  detail"]
        for o in self.outcomes:
            rec = "NO" if o.recovered_s is None else f"{o.recovered_s:.1f}"
            tot = "-" if o.total_s is None else f"{o.total_s:.1f}"
            lines.append(f"{o.fault:<18}{o.at_s:>8.1f}{o.lasted_s:>10.1f}{rec:>13}{tot:>9}  {o.detail}")
        return "\n".join(lines)

    def summary(self) -> str:
        by: dict[str, list[float]] = {}
        for o in self.outcomes:
            if o.recovered_s is not None:
                by.setdefault(o.fault, []).append(o.recovered_s)
        rows = [f"{'fault':<18}{'n':>4}{'recovery median s':>19}{'max s':>8}"]
        for fault, xs in sorted(by.items()):
            xs.sort()
            rows.append(f"{fault:<18}{len(xs):>4}{xs[len(xs) // 2]:>19.1f}{xs[-1]:>8.1f}")
        return "\n".join(rows)

    def as_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok, "records": self.head, "seconds": round(self.seconds, 1),
                "gateway_starts": self.starts, "unexpected_exits": self.unexpected_exits,
                "energy_sources": len(self.energy),
                "faults": [{"fault": o.fault, "lasted_s": round(o.lasted_s, 2),
                            "recovered_s": None if o.recovered_s is None else round(o.recovered_s, 2)}
                           for o in self.outcomes]}


def chaos_config(*, appliances: int = 8, tmpfs_size: str = "32m") -> RigConfig:
    """Commits at every batch (hold_s 0) and short interims, so records flow all the time and every fault lands
    among commits and sends; the clock runs 10x (a Modbus poll every 0.1 s of real time)."""
    return RigConfig(mixed(appliances), speed=10.0, interim_s=10, tmpfs_size=tmpfs_size, power_cut_snapshots=True,
                     stale_after_s=20.0, gateway={"hold_s": 0, "checkpoint_s": 5, "batch_ms": 500})


async def run_chaos(folder: Path, *, seed: int, rounds: int = 1, gap_s: tuple[float, float] = (1.0, 3.0),
                    duration_s: tuple[float, float] = (1.0, 3.0), cfg: RigConfig | None = None,
                    warmup_s: float = 3.0) -> ChaosRun:
    t0 = time.monotonic()
    run = ChaosRun(seed)
    rng = random.Random(seed)
    async with Rig(folder, cfg or chaos_config()) as rig:
        faults = Faults(rig)
        plan = schedule(faults.available(), rounds, rng, gap_s=gap_s, duration_s=duration_s)
        rig.note(f"chaos seed {seed}: {len(plan)} faults: {', '.join(f for _, f, _ in plan)}")
        await _until(lambda: rig.cloud_max_seq() > 0, 60.0, "the first record at the cloud")
        await asyncio.sleep(warmup_s)
        for pause, fault, duration in plan:
            await asyncio.sleep(pause)
            run.outcomes.append(await faults.run(fault, duration))
        await _finish(rig)
        run.unexpected_exits, run.starts = list(rig.gateway_exits), rig.starts
        _check(rig, run)
        run.log = list(rig.log)
    run.seconds = time.monotonic() - t0
    return run


async def _until(cond: Any, within: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > within:
            raise TimeoutError(f"chaos: waited {within:g} s for {what}")
        await asyncio.sleep(0.1)


async def _finish(rig: Rig, rounds: int = 3) -> None:
    """Stop the gateway cleanly; start it again (and stop it) while the cloud lacks some of its records."""
    for _ in range(rounds):
        code = rig.kill_gateway(signal.SIGTERM)
        rig.note(f"gateway stopped (SIGTERM), exit {code}")
        _, head = rig.gateway_head()
        if rig.cloud_max_seq() >= head and _acked(rig) >= head:
            return
        rig.start_gateway()
        await _until(lambda: rig.cloud_max_seq() >= rig.gateway_head()[1], 60.0, "the cloud to catch up")
        await asyncio.sleep(1.0)


def _acked(rig: Rig) -> int:
    with Ledger.open(StateDir(rig.state).ledger, gateway_id=GATEWAY, key=None) as ledger:
        return ledger.acked_through()


def _check(rig: Rig, run: ChaosRun) -> None:
    sd = StateDir(rig.state)
    with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=None) as ledger:
        epoch = ledger.epoch
        run.head = ledger.head()[0]
        run.acked_through = ledger.acked_through()
        mine = {r.seq: r.body for r in ledger.iter_records()}
        report = ledger.verify(sd.public_key())
        run.ledger_verify = "" if report.ok else f"seq {report.first_bad_seq}: {report.reason}"
    if sorted(mine) != list(range(1, run.head + 1)):
        run.ledger_verify += f" the ledger lacks seqs (pruned?): holds {len(mine)} of {run.head}"
    with SqliteStore(rig.db) as store:
        run.cloud_seqs = store.stored_seqs(GATEWAY, epoch)
        bodies = list(store.bodies(GATEWAY))
        run.alarms = [f"{e}/{s} {k}: {d}" for _, e, s, k, d in store.alarms(GATEWAY)]
    theirs = {json.loads(b)["data"]["seq"]: b for b in bodies}
    run.identical_bytes = all(theirs.get(seq) == bytes(body) for seq, body in mine.items())
    _, problems = verify_chain(bodies, sd.public_key())
    run.cloud_problems = [f"{p.epoch}/{p.seq}: {p.reason}" for p in problems]
    try:
        run.energy = conservation([json.loads(b) for b in bodies])
    except AssertionError as e:
        run.energy_problem = str(e) or "not conserved"
