"""Benchmarks for the metering core and the ledger, each beside a baseline measured in the same run.

    .venv/bin/python bench/metering.py [ledger|core|all] [--records N] [--batch B] [--rounds R]

- ledger: records/s appended by `Ledger.append` with full durability (WAL, synchronous=FULL, one transaction per
  batch), from realistic usage drafts (building the event, chaining, ECDSA-signing every record), beside raw SQLite
  inserts of the SAME rows (the bodies the ledger produced, precomputed) into a table of the same schema, with the
  same pragmas and batch size. Rounds alternate ledger and raw so a busy machine slows both alike; the best round
  of each is reported.
- core: readings/s through `ApplianceMeter.feed` (and `tick`) beside a bare loop over the same readings.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the `metering` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from koto.canonical import canonical_bytes  # noqa: E402
from koto.signing import generate_key, sign_bytes  # noqa: E402
from metering.ledger import INSERT_SQL, SCHEMA, Ledger, connect  # noqa: E402
from metering.records import Draft, RecordKind, TimeStatus, UsageRecord, usage_draft  # noqa: E402

T0 = 1_800_000_000.0


def usage_drafts(n: int) -> list[Draft]:
    """A washer-like stream: function records with registers, tariff and cost, a cycle record every 8."""
    out: list[Draft] = []
    functions = ("fill", "heat", "wash", "spin")
    register = 12_345_678_000
    for i in range(n):
        cycle = i // 8
        t = T0 + i * 60
        if i % 8 == 7:
            rec = UsageRecord(
                kind=RecordKind.CYCLE, appliance="washer", source="washer.sdm120", function="cotton40",
                t_start_mono_ns=(i - 7) * 60 * 10**9, t_end_mono_ns=i * 60 * 10**9, t_start_wall=t - 420,
                t_end_wall=t, boot_id="6f1c0d5e-8f7a-4c1e-9a33-0d2b7c1e5f10", cycle_id=f"washer-{cycle}",
                uses=1, cycle_energy_mwh=812_000, duration_ms=420_000, peak_power_mw=2_150_000,
                tariff_id="household-2026", tariff_version=3, currency="EUR", cost_minor=50,
            )
        else:
            e = 95_000 + (i * 7919) % 20_000
            rec = UsageRecord(
                kind=RecordKind.FUNCTION, appliance="washer", source="washer.sdm120", function=functions[i % 4],
                t_start_mono_ns=i * 60 * 10**9, t_end_mono_ns=(i + 1) * 60 * 10**9, t_start_wall=t - 60,
                t_end_wall=t, boot_id="6f1c0d5e-8f7a-4c1e-9a33-0d2b7c1e5f10", time_status=TimeStatus.SYNCED,
                energy_mwh=e, duration_ms=60_000, cycle_id=f"washer-{cycle}", register_start_mwh=register,
                register_end_mwh=register + e, peak_power_mw=2_150_000, tariff_id="household-2026",
                tariff_version=3, currency="EUR", cost_minor=(e * 31 + 500_000) // 1_000_000,
            )
            register += e
        out.append(usage_draft(rec, "urn:koto:subject:flat-12"))
    return out


def _ledger_round(dirpath: Path, drafts: list[Draft], batch: int, epoch: int) -> tuple[float, list[tuple[object, ...]]]:
    key = generate_key()
    path = dirpath / f"ledger-{epoch}.db"
    with Ledger.open(path, gateway_id="bench-gw", key=key, epoch=epoch) as ledger:
        t = time.perf_counter()
        for i in range(0, len(drafts), batch):
            ledger.append(drafts[i : i + batch])
        elapsed = time.perf_counter() - t
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT seq, id, type, kind, appliance, function, cycle_id, t_end_ms, energy_mwh, duration_ms, uses, "
        "cost_minor, currency, hash, body FROM records ORDER BY seq"
    ).fetchall()
    conn.close()
    return len(drafts) / elapsed, rows


def _raw_round(dirpath: Path, rows: list[tuple[object, ...]], batch: int, tag: int) -> float:
    conn = connect(dirpath / f"raw-{tag}.db")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_SQL, rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return len(rows) / elapsed


def _sign_rate(rows: list[tuple[object, ...]]) -> float:
    """ECDSA P-256 signatures/s over the records' own unsigned bytes: the floor of the ledger's per-record cost."""
    key = generate_key()
    unsigned = []
    for row in rows:
        event = json.loads(row[-1])  # type: ignore[arg-type]
        del event["sig"]
        unsigned.append(canonical_bytes(event))
    t = time.perf_counter()
    for b in unsigned:
        sign_bytes(key, b)
    return len(unsigned) / (time.perf_counter() - t)


def bench_ledger(records: int = 5000, batch: int = 100, rounds: int = 3) -> tuple[float, float]:
    drafts = usage_drafts(records)
    best_ledger = best_raw = best_sign = 0.0
    with tempfile.TemporaryDirectory(prefix="koto-bench-") as tmp:
        d = Path(tmp)
        for r in range(rounds):
            rate, rows = _ledger_round(d, drafts, batch, epoch=1_000 + r)
            best_ledger = max(best_ledger, rate)
            best_raw = max(best_raw, _raw_round(d, rows, batch, r))
            best_sign = max(best_sign, _sign_rate(rows))
    ratio = best_ledger / best_raw
    print(
        f"ledger: {best_ledger:,.0f} records/s; raw sqlite: {best_raw:,.0f} records/s; ratio {ratio:.2f}x "
        f"({records} records, batches of {batch}, WAL + synchronous=FULL, best of {rounds})"
    )
    per_ledger, per_raw, per_sign = 1e6 / best_ledger, 1e6 / best_raw, 1e6 / best_sign
    print(
        f"ledger: per record {per_ledger:.1f} us = ECDSA P-256 sign {per_sign:.1f} us + raw insert/commit "
        f"{per_raw:.1f} us + the rest (building, chaining, Python) {max(0.0, per_ledger - per_sign - per_raw):.1f} us; "
        f"without the signature the ratio would be {per_raw / max(per_ledger - per_sign, per_raw):.2f}x"
    )
    return best_ledger, best_raw


def bench_core(readings: int = 200_000, rounds: int = 3) -> tuple[float, float]:
    """Readings/s through `ApplianceMeter.feed` (a washer from 1 s power samples with a register every 10 s, ticked
    as the daemon does), beside a bare loop that touches the same readings and ticks. Best of `rounds` each."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the trace builders live with the tests
    from koto.clock import Now
    from metering.energy import EnergySpec
    from metering.meter import ApplianceMeter
    from metering.profile import builtin_profile
    from tests.traces import build, washer_script

    script = washer_script()
    one = len(build(script, source="washer.sdm120", register=True, tick=False))
    script.phases = script.phases * max(1, readings // one)
    items = build(script, source="washer.sdm120", register=True)
    n = sum(1 for it in items if not isinstance(it, Now))
    profile = builtin_profile("washing_machine")
    best_core = best_bare = 0.0
    made = 0
    for _ in range(rounds):
        meter = ApplianceMeter("washer", profile, energy=EnergySpec("register", "washer.sdm120"))
        feed, tick = meter.feed, meter.tick
        t = time.perf_counter()
        made = 0
        for it in items:
            res = tick(it) if isinstance(it, Now) else feed(it)
            if res:
                made += len(res.records)
        best_core = max(best_core, n / (time.perf_counter() - t))
        sink = 0
        t = time.perf_counter()
        for it in items:
            if isinstance(it, Now):
                sink ^= it.mono_ns
            else:
                sink ^= it.t_mono_ns
        best_bare = max(best_bare, n / (time.perf_counter() - t))
    print(
        f"core: {best_core:,.0f} readings/s; bare loop: {best_bare:,.0f} readings/s; "
        f"ratio {best_core / best_bare:.3f}x ({n:,} readings: washer, 1 s power + 10 s register, ticked; "
        f"{made:,} records, {sum(meter.rejected.values())} rejected; best of {rounds})"
    )
    return best_core, best_bare


SECTIONS: dict[str, Callable[[argparse.Namespace], object]] = {
    "ledger": lambda a: bench_ledger(a.records, a.batch, a.rounds),
    "core": lambda a: bench_core(rounds=a.rounds),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", nargs="?", default="all", choices=[*SECTIONS, "all"])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    for name, fn in SECTIONS.items():
        if args.section in (name, "all"):
            fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
