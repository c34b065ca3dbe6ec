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
- retention prunes during the run (sim_gateway.py's `housekeeping` knobs: a simulated minute of retention, a
  prune every 20 simulated seconds), and nothing unacked was pruned: every time the ledger's anchor moves
  (watched all along), every seq below it had been acked and the receiver holds it; at the end the ledger holds
  every seq from its anchor to its head, `koto verify` (the CLI) proves that rest from the moved anchor, the
  receiver's copy of the pruned prefix links to that anchor, and energy is conserved over the pruned records (read
  at the receiver) plus the ones the ledger kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.verify import verify_chain
from gateway.state import StateDir
from metering.ledger import Ledger
from metering.records import PARTITION_KINDS, USAGE_TYPE
from tests.support.ledger_checks import conservation
from tests.support.paths import REPO

from .faults import Faults, Outcome, schedule
from .rig import GATEWAY, Rig, RigConfig, mixed

WATCH_S = 0.25  # how often the retention watch reads the ledger's anchor and ack


@dataclass
class Prune:
    """A move of the ledger's anchor, seen by the retention watch."""

    at_s: float
    through: int  # the last pruned seq
    acked: int  # the ledger's acked_through just after
    head: int
    cloud_holds: int  # the receiver held every seq up to this one just after

    @property
    def unacked(self) -> int:
        return self.head - self.acked


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
    prunes: list[Prune] = field(default_factory=list)
    pruned_logged: list[int] = field(default_factory=list)  # records per prune, from the gateway's own log
    retention_problems: list[str] = field(default_factory=list)
    anchor: int = 1
    koto_verify: str = ""
    pruned_energy_mwh: int = 0  # of the register sources' partition records, pruned from the ledger
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
        out += [f"retention: {p}" for p in self.retention_problems]
        if self.acked_through != self.head:
            out.append(f"acked through {self.acked_through}, head {self.head}")
        if self.unexpected_exits:  # every fault here is one the daemon must ride out; a stop can lose held records
            out.append(f"the gateway exited by itself (exit codes {self.unexpected_exits}): a fault stopped it")
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
                "energy_sources": len(self.energy), "prunes": len(self.pruned_logged),
                "records_pruned": sum(self.pruned_logged), "anchor": self.anchor,
                "prunes_with_unacked": sum(1 for p in self.prunes if p.unacked > 0),
                "faults": [{"fault": o.fault, "lasted_s": round(o.lasted_s, 2),
                            "recovered_s": None if o.recovered_s is None else round(o.recovered_s, 2)}
                           for o in self.outcomes]}


RETENTION = {"retain_s": 60.0, "every_s": 20.0, "retry_s": 5.0, "any_use": 1.0}


def chaos_config(*, appliances: int = 8, tmpfs_size: str = "32m", store: str = "sqlite") -> RigConfig:
    """Commits at every batch (hold_s 0) and short interims, so records flow all the time and every fault lands
    among commits and sends; the clock runs 10x (a Modbus poll every 0.1 s of real time). Retention keeps a
    simulated minute and runs every 20 simulated seconds (2 s of real time; `RETENTION`), so a run prunes again
    and again, also in the middle of the faults that hold the acks back (a broker or receiver down, a full disk)."""
    return RigConfig(mixed(appliances), speed=10.0, interim_s=10, tmpfs_size=tmpfs_size, power_cut_snapshots=True,
                     stale_after_s=20.0, gateway={"hold_s": 0, "checkpoint_s": 5, "batch_ms": 500},
                     housekeeping=dict(RETENTION), store=store)


async def run_chaos(folder: Path, *, seed: int, rounds: int = 1, gap_s: tuple[float, float] = (1.0, 3.0),
                    duration_s: tuple[float, float] = (1.0, 3.0), cfg: RigConfig | None = None,
                    warmup_s: float = 3.0, only: tuple[str, ...] = ()) -> ChaosRun:
    """`rounds` of every fault the rig supports (or of those in `only`), then the checks of the module docstring."""
    t0 = time.monotonic()
    run = ChaosRun(seed)
    rng = random.Random(seed)
    async with Rig(folder, cfg or chaos_config()) as rig:
        faults = Faults(rig)
        chosen = [f for f in faults.available() if not only or f in only]
        plan = schedule(chosen, rounds, rng, gap_s=gap_s, duration_s=duration_s)
        rig.note(f"chaos seed {seed}: {len(plan)} faults: {', '.join(f for _, f, _ in plan)}")
        await _until(lambda: rig.cloud_max_seq() > 0, 60.0, "the first record at the cloud")
        await asyncio.sleep(warmup_s)
        watch = asyncio.create_task(_watch_retention(rig, run))
        try:
            for pause, fault, duration in plan:
                await asyncio.sleep(pause)
                run.outcomes.append(await faults.run(fault, duration))
            await _finish(rig)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        run.unexpected_exits, run.starts = list(rig.gateway_exits), rig.starts
        _check(rig, run)
        run.log = list(rig.log)
    run.seconds = time.monotonic() - t0
    return run


async def _watch_retention(rig: Rig, run: ChaosRun) -> None:
    """Each time the ledger's anchor moves (a prune committed), check what it left: every seq below it acked by
    the cloud and held by the receiver. An anchor that moves back would mean a power cut undid a committed prune."""
    last = 1
    while True:
        await asyncio.sleep(WATCH_S)
        try:
            anchor, acked, head = await asyncio.to_thread(rig.ledger_marks)  # the daemon lends it within 1 s
        except Exception:  # the ledger is being restored (power cut) or not made yet: look again
            continue
        if anchor == last:
            continue
        if anchor < last:
            run.retention_problems.append(f"the anchor moved back from {last} to {anchor}")
            last = anchor
            continue
        holds = await asyncio.to_thread(rig.cloud.contiguous_through, GATEWAY)
        p = Prune(time.monotonic() - rig.real0_ns / 1e9, anchor - 1, acked, head, holds)
        run.prunes.append(p)
        rig.note(f"retention: seqs {last}..{p.through} pruned; acked through {acked}, head {head}, "
                 f"{p.unacked} unacked; the receiver holds 1..{holds}")
        if p.through > acked:
            run.retention_problems.append(f"seqs {acked + 1}..{p.through} pruned before the cloud acked them")
        if p.through > holds:
            run.retention_problems.append(f"seqs {holds + 1}..{p.through} pruned; the receiver lacks {holds + 1}")
        last = anchor


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
        t0 = time.monotonic()
        # in a thread: the running daemon lends its ledger within a second, and this loop runs the meters' bus
        while rig.cloud_max_seq() < (await asyncio.to_thread(rig.gateway_head))[1]:
            if time.monotonic() - t0 > 60.0:
                raise TimeoutError("chaos: waited 60 s for the cloud to catch up")
            await asyncio.sleep(0.1)
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
        run.anchor, anchor_prev = ledger.anchor()
        mine = {r.seq: r.body for r in ledger.iter_records()}
        kept = [r.event() for r in ledger.iter_records()]
        report = ledger.verify(sd.public_key())
        run.ledger_verify = "" if report.ok else f"seq {report.first_bad_seq}: {report.reason}"
    if sorted(mine) != list(range(run.anchor, run.head + 1)):
        run.ledger_verify += (f" the ledger lacks seqs: holds {len(mine)} of {run.anchor}..{run.head} "
                              f"(an unacked record pruned?)")
    run.koto_verify = _koto_verify(rig)
    if not run.koto_verify.startswith("ok"):
        run.retention_problems.append(f"koto verify: {run.koto_verify}")
    with rig.cloud.store() as store:
        run.cloud_seqs = store.stored_seqs(GATEWAY, epoch)
        bodies = list(store.bodies(GATEWAY))
        run.alarms = [f"{e}/{s} {k}: {d}" for _, e, s, k, d in store.alarms(GATEWAY)]
    theirs = {json.loads(b)["data"]["seq"]: b for b in bodies}
    run.identical_bytes = all(theirs.get(seq) == bytes(body) for seq, body in mine.items())
    _, problems = verify_chain(bodies, sd.public_key())
    run.cloud_problems = [f"{p.epoch}/{p.seq}: {p.reason}" for p in problems]
    pruned = [json.loads(theirs[s]) for s in range(1, run.anchor) if s in theirs]
    if len(pruned) != run.anchor - 1:
        run.retention_problems.append(f"the receiver lacks {run.anchor - 1 - len(pruned)} of the pruned seqs")
    if run.anchor in theirs and json.loads(theirs[run.anchor])["prevhash"] != anchor_prev:
        run.retention_problems.append("the receiver's record at the anchor does not link to the ledger's anchor")
    try:
        run.energy = conservation([json.loads(b) for b in bodies])
        whole = conservation(pruned + kept)  # the pruned records (at the receiver) plus what the ledger kept
        run.pruned_energy_mwh = sum(e["data"]["energy_mwh"] for e in pruned if e["data"].get("source") in whole
                                    and e["type"] == USAGE_TYPE and e["data"]["kind"] in PARTITION_KINDS)
        if whole != run.energy:
            run.energy_problem = "pruned plus kept records do not add up to the receiver's totals"
    except AssertionError as e:
        run.energy_problem = str(e) or "not conserved"
    run.pruned_logged = _logged_prunes(rig.folder / "gateway.log")


def _koto_verify(rig: Rig) -> str:
    """`koto verify` on the stopped gateway's state folder: its one line of verdict."""
    out = subprocess.run([sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())",
                          "verify", "--config", str(rig.folder / "koto.toml")],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120)
    lines = (out.stdout.strip() or out.stderr.strip()).splitlines()
    return lines[-1] if lines else f"exit {out.returncode}, no output"


def _logged_prunes(log: Path) -> list[int]:
    """Records removed per prune, from the housekeeper's log line in every incarnation of the gateway."""
    found = re.findall(r"retention: removed (\d+) records", log.read_text(errors="replace"))
    return [int(n) for n in found]
