"""A small gateway for sync tests and benches: a ledger fed with metered-looking records, and Sync.

Used in-process (`make_gateway`, `append_usage`) and as a child process that the kill -9 tests SIGKILL and restart:

    python -m tests.support.gw_child --state DIR --gateway gw-1 --broker mqtt://127.0.0.1:PORT \
        --total 2000 --rate 400 [--ca CA --cert CRT --key KEY] [--ack-timeout 2]

The child opens (or reopens) the ledger in DIR, appends records at a steady rate until the ledger holds `total`,
runs Sync all along, and exits 0 once every record is acked by the cloud. Each record carries a simulated energy
register (`register_start_mwh` = the previous record's `register_end_mwh`), continued from the ledger's head after
a restart, so a test can check that energy is conserved end to end: the sum of `energy_mwh` at the receiver equals
the last register reading minus the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koto.clock import SystemClock
from koto.signing import PrivateKey, generate_key, load_private_key, save_private_key
from metering.ledger import Ledger
from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft

from .paths import REPO

START_WALL = 1_764_460_800.0


def device_key(state: Path) -> PrivateKey:
    path = state / "device.pem"
    if path.exists():
        return load_private_key(path)
    key = generate_key()
    save_private_key(key, path)
    return key


def open_ledger(state: Path, gateway_id: str, *, epoch: int = 7) -> Ledger:
    state.mkdir(parents=True, exist_ok=True)
    return Ledger.open(state / "ledger.db", gateway_id=gateway_id, key=device_key(state), epoch=epoch)


def last_register(ledger: Ledger) -> int:
    """The register reading at the end of the last usage record (0 for an empty ledger)."""
    seq, _ = ledger.head()
    while seq > 0:
        rec = ledger.get(seq)
        if rec is not None and rec.type == "io.koto.usage.v1":
            return int(rec.event()["data"].get("register_end_mwh", 0))
        seq -= 1
    return 0


def usage_records(n: int, *, register_start: int, seq_hint: int) -> list[UsageRecord]:
    """`n` function records whose registers chain on from `register_start` (energy 1..97 mWh each)."""
    out = []
    reg = register_start
    for i in range(n):
        k = seq_hint + i
        energy = 1 + (k * 37) % 97
        t0 = START_WALL + k
        out.append(UsageRecord(
            kind=RecordKind.FUNCTION, appliance="washer", source="washer-plug", function="wash",
            t_start_mono_ns=k * 1_000_000_000, t_end_mono_ns=(k + 1) * 1_000_000_000, t_start_wall=t0,
            t_end_wall=t0 + 1, boot_id="boot", time_status=TimeStatus.SYNCED, energy_mwh=energy,
            duration_ms=1000, register_start_mwh=reg, register_end_mwh=reg + energy, peak_power_mw=3_600_000,
        ))
        reg += energy
    return out


def append_usage(ledger: Ledger, n: int, *, batch: int = 500) -> None:
    """Append `n` records in transactions of `batch` (the meter's batched writes)."""
    done = 0
    while done < n:
        k = min(batch, n - done)
        head, _ = ledger.head()
        recs = usage_records(k, register_start=last_register(ledger), seq_hint=head + 1)
        ledger.append([usage_draft(r, "urn:koto:appliance:washer") for r in recs])
        done += k


def energy_check(bodies: list[bytes]) -> tuple[int, int, int]:
    """(sum of energy_mwh, first register start, last register end) over usage bodies in seq order."""
    total, first, last = 0, None, 0
    for body in bodies:
        data = json.loads(body)["data"]
        if "register_start_mwh" not in data:
            continue
        if first is None:
            first = data["register_start_mwh"]
        elif data["register_start_mwh"] != last:
            raise AssertionError(f"register does not chain at seq {data['seq']}: "
                                 f"{data['register_start_mwh']} != {last}")
        total += data["energy_mwh"]
        last = data["register_end_mwh"]
    return total, first or 0, last


async def _child(args: argparse.Namespace) -> int:
    from gateway.config import SyncConfig
    from gateway.sync import Sync

    state = Path(args.state)
    ledger = open_ledger(state, args.gateway)
    cfg = SyncConfig(
        gateway_id=args.gateway, broker=args.broker,
        ca=Path(args.ca) if args.ca else None, cert=Path(args.cert) if args.cert else None,
        key=Path(args.key) if args.key else None, ack_timeout_s=args.ack_timeout, window=args.window,
        backoff_initial_s=0.2, backoff_cap_s=args.backoff_cap,
    )
    sync = Sync(cfg, ledger, clock=SystemClock(), version="test-child")
    tick = 0.02
    per_tick = max(1, round(args.rate * tick))
    async with sync:
        while True:
            head, _ = ledger.head()
            if head < args.total:
                append_usage(ledger, min(per_tick, args.total - head), batch=per_tick)
                sync.notify()
                await asyncio.sleep(tick)
                continue
            await sync.wait_acked(args.total)
            break
    ledger.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--state", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--total", type=int, default=1000)
    p.add_argument("--rate", type=float, default=500.0, help="records per second")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--ack-timeout", type=float, default=3.0)
    p.add_argument("--backoff-cap", type=float, default=1.0)
    args = p.parse_args(argv)
    return asyncio.run(_child(args))


if __name__ == "__main__":
    sys.exit(main())


# -- chaos: the child gateway SIGKILLed and restarted, the broker stopped and restarted, during one run ----------

@dataclass
class ChaosResult:
    total: int
    gateway_kills: int
    broker_restarts: int
    stored: int
    exactly_once: bool
    chain_problems: list[str]
    energy_mwh: int
    register_delta_mwh: int
    seconds: float
    child_restarts: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.exactly_once and not self.chain_problems and self.stored == self.total
                and self.energy_mwh == self.register_delta_mwh)


async def chaos(folder: Path, *, total: int, gateway_kills: int, broker_restarts: int, rate: float = 400.0,
                gateway_id: str = "gw-chaos", tls: bool = False, broker_down_s: float = 0.5,
                timeout_s: float = 600.0) -> ChaosResult:
    """Run the child gateway against Mosquitto and the reference receiver, killing things as records flow.

    Events fire when the receiver has stored evenly spaced fractions of `total`, so every kill and restart lands
    in the middle of a drain; kills and broker restarts are interleaved. At the end the child must exit 0 (every
    record acked) and the receiver must hold every seq exactly once, with the chain and the energy intact.
    """
    import os
    import signal
    import subprocess
    import time

    from cloud.receiver import Receiver, ReceiverConfig
    from cloud.store import SqliteStore
    from cloud.verify import verify_chain
    from koto.signing import public_pem

    from .broker import Mosquitto
    from .pki import TestPKI

    t0 = time.monotonic()
    pki = TestPKI(folder / "pki") if tls else None
    state = folder / "gw"
    state.mkdir(parents=True, exist_ok=True)
    key = device_key(state)
    db = folder / "cloud.db"
    store = SqliteStore(db)
    store.register(gateway_id, public_pem(key))
    reader = SqliteStore(db)
    order = ["kill"] * gateway_kills  # broker restarts spread evenly among the kills
    for i in range(broker_restarts):
        order.insert(round((i + 1) * (gateway_kills + i) / (broker_restarts + 1)), "broker")
    thresholds = [total * (i + 1) // (len(order) + 1) for i in range(len(order))]
    result = ChaosResult(total, 0, 0, 0, False, [], 0, 0, 0.0)

    with Mosquitto(folder / "broker", pki=pki) as broker:
        cmd = [sys.executable, "-m", "tests.support.gw_child", "--state", str(state), "--gateway", gateway_id,
               "--broker", broker.url, "--total", str(total), "--rate", str(rate), "--ack-timeout", "2"]
        rx_kw: dict[str, Any] = {}
        if pki is not None:
            pair, rx = pki.client(gateway_id), pki.client("koto-receiver")
            cmd += ["--ca", str(pki.ca), "--cert", str(pair.cert), "--key", str(pair.key)]
            rx_kw = {"ca": pki.ca, "cert": rx.cert, "key": rx.key}
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(cmd, cwd=REPO, env=env)

        child = spawn()
        async with Receiver(store, ReceiverConfig(broker=broker.url, client_id="rx-chaos", **rx_kw)):
            for what, at in zip(order, thresholds, strict=True):
                while reader.count(gateway_id) < at:
                    if time.monotonic() - t0 > timeout_s:
                        raise TimeoutError(f"chaos: stuck below {at} stored records")
                    await asyncio.sleep(0.02)
                if what == "kill":
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    result.gateway_kills += 1
                    result.log.append(f"SIGKILL gateway at {reader.count(gateway_id)} stored")
                    child = spawn()
                else:
                    broker.stop()
                    result.log.append(f"broker stopped at {reader.count(gateway_id)} stored")
                    await asyncio.sleep(broker_down_s)
                    broker.start()
                    result.broker_restarts += 1
            while child.poll() is None:
                if time.monotonic() - t0 > timeout_s:
                    child.kill()
                    raise TimeoutError("chaos: the gateway did not finish")
                await asyncio.sleep(0.05)
            if child.returncode != 0:
                raise RuntimeError(f"chaos: the gateway exited with {child.returncode}")
        ledger = Ledger.open(state / "ledger.db", gateway_id=gateway_id, key=None)
        epoch = ledger.epoch
        ledger.close()
        seqs = reader.stored_seqs(gateway_id, epoch)
        bodies = list(reader.bodies(gateway_id))
        result.stored = len(seqs)
        result.exactly_once = seqs == list(range(1, total + 1)) and reader.count(gateway_id) == total
        _, problems = verify_chain(bodies, key.public_key())
        result.chain_problems = [f"{p.epoch}/{p.seq}: {p.reason}" for p in problems]
        energy, first, last = energy_check(bodies)
        result.energy_mwh, result.register_delta_mwh = energy, last - first
    store.close()
    reader.close()
    result.seconds = time.monotonic() - t0
    return result
