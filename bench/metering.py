"""Benchmarks for the metering core and the ledger, each beside a baseline measured in the same run.

    .venv/bin/python bench/metering.py [ledger|core|all] [--records N] [--batch 1,10,100] [--rounds R]

- ledger: for each batch size, records/s appended by `Ledger.append` with full durability (WAL, synchronous=FULL,
  one transaction per batch), from realistic usage drafts (building the event, chaining, ECDSA-signing every
  record), beside raw SQLite inserts of the SAME rows (the bodies the ledger produced, precomputed) into a table of
  the same schema, with the same pragmas and batch size. Then the per-record breakdown: the signature, the raw
  insert/commit, building and chaining, and the rest. Rounds alternate ledger and raw so a busy machine slows both
  alike; the best round of each is reported. Batches of 1 cost an fsync per record, so they use at most 1000.
- core: readings/s through `ApplianceMeter.feed` (and `tick`) beside a bare loop over the same readings.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the `metering` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from koto.canonical import ZERO_HASH, canonical_bytes  # noqa: E402
from koto.signing import generate_key  # noqa: E402
from metering.ledger import Ledger  # noqa: E402
from metering.ledger.envelope import PREHASHED_ECDSA, Envelope  # noqa: E402
from metering.ledger.store import INSERT_SQL, RECORD_COLS, connect, create_schema  # noqa: E402
from metering.records import Draft, RecordKind, TimeStatus, UsageRecord, usage_draft  # noqa: E402

T0 = 1_800_000_000.0
WARMUP = 64  # appended before each timed ledger round, so both sides start from a non-empty database


def usage_drafts(n: int, *, t0: float = T0, first_cycle: int = 0) -> list[Draft]:
    """A washer-like stream: function records with registers, tariff and cost, a cycle record every 8."""
    out: list[Draft] = []
    functions = ("fill", "heat", "wash", "spin")
    register = 12_345_678_000
    for i in range(n):
        cycle = first_cycle + i // 8
        t = t0 + i * 60
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


def _timed_rows(path: Path, after_seq: int) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    rows = conn.execute(f"SELECT {RECORD_COLS} FROM records WHERE seq>? ORDER BY seq", (after_seq,)).fetchall()
    conn.close()
    return rows


def _ledger_round(dirpath: Path, drafts: list[Draft], batch: int, tag: str) -> tuple[float, list[tuple[object, ...]]]:
    """Records/s of `Ledger.append` over `drafts` in batches of `batch`, and the rows it stored. A warm-up batch is
    appended first, outside the timing, as on the raw side."""
    path = dirpath / f"ledger-{tag}.db"
    with Ledger.open(path, gateway_id="bench-gw", key=generate_key(), epoch=1_000) as ledger:
        ledger.append(usage_drafts(WARMUP, t0=T0 - 86_400))
        t = time.perf_counter()
        for i in range(0, len(drafts), batch):
            ledger.append(drafts[i : i + batch])
        elapsed = time.perf_counter() - t
    return len(drafts) / elapsed, _timed_rows(path, WARMUP)


def _raw_round(dirpath: Path, rows: list[tuple[object, ...]], batch: int, tag: str) -> float:
    """Records/s of raw SQLite: the same rows (the ledger's own bytes), same schema, pragmas and batch size, one
    `BEGIN IMMEDIATE ... COMMIT` per batch, nothing else."""
    conn = connect(dirpath / f"raw-{tag}.db")
    create_schema(conn)
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_SQL, rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return len(rows) / elapsed


def _sign_rate(rows: list[tuple[object, ...]]) -> float:
    """ECDSA P-256 signatures/s over the records' own digests, done as the ledger does it (prehashed, base64):
    the floor of the in-process ledger's per-record cost."""
    key = generate_key()
    digests = []
    for row in rows:
        event = json.loads(row[-1])  # type: ignore[arg-type]
        del event["sig"]
        digests.append(hashlib.sha256(canonical_bytes(event)).digest())
    t = time.perf_counter()
    for d in digests:
        binascii.b2a_base64(key.sign(d, PREHASHED_ECDSA), newline=False).decode("ascii")
    return len(digests) / (time.perf_counter() - t)


def _build_rate(drafts: list[Draft], batch: int) -> float:
    """Records/s of building and chaining alone (validate, JSON, canonical text, sha256), no signing, no SQL."""
    envelope = Envelope(epoch=1_000, gateway_id="bench-gw", gateway_subject="urn:koto:gw:bench-gw")
    t = time.perf_counter()
    for i in range(0, len(drafts), batch):
        envelope.prepare(drafts[i : i + batch], 0, ZERO_HASH, {})
    return len(drafts) / (time.perf_counter() - t)


FIGURES: list[object] = []  # bench.figures.Figure, when run under report.py (`--json`)


def _figure(**kw: object) -> None:
    if "--json" in sys.argv:
        from bench.figures import Figure

        FIGURES.append(Figure(**kw))  # type: ignore[arg-type]


def bench_ledger(records: int = 5000, batches: tuple[int, ...] = (1, 10, 100), rounds: int = 3) -> None:
    """For each batch size: the ledger beside raw SQLite inserts of the same bytes; best of `rounds`, rounds
    alternating ledger and raw."""
    print(
        f"ledger vs raw sqlite: WAL + synchronous=FULL, one transaction per batch, the same rows and bytes, "
        f"best of {rounds}; every record ECDSA-signed"
    )
    with tempfile.TemporaryDirectory(prefix="koto-bench-") as tmp:
        d = Path(tmp)
        for batch in batches:
            n = min(records, 1000 * batch)  # batches of 1 cost an fsync per record: fewer records, same method
            drafts = usage_drafts(n)
            best = best_raw = 0.0
            rows: list[tuple[object, ...]] = []
            for r in range(rounds):
                tag = f"{batch}-{r}"
                rate, rows = _ledger_round(d, drafts, batch, tag)
                best = max(best, rate)
                best_raw = max(best_raw, _raw_round(d, rows, batch, tag))
            print(
                f"batch {batch:>4}: ledger {best:>8,.0f} records/s; raw sqlite {best_raw:>8,.0f} records/s; "
                f"ratio {best / best_raw:.2f}x ({n} records)"
            )
            _figure(name=f"ledger append, batch {batch}", value=best, unit="records/s", baseline=best_raw,
                    baseline_name="raw SQLite inserts of the same rows", note="every record ECDSA-signed, WAL, FULL")
            sign = 1e6 / _sign_rate(rows)
            build = 1e6 / max(_build_rate(drafts, batch) for _ in range(rounds))
            per_raw = 1e6 / best_raw
            per = 1e6 / best
            print(
                f"batch {batch:>4}: per record {per:.1f} us = ECDSA P-256 sign {sign:.1f} + raw insert/commit "
                f"{per_raw:.1f} + build/chain {build:.1f} + the rest (assemble, head, Python) "
                f"{per - sign - per_raw - build:.1f} us"
            )


def bench_core(readings: int = 200_000, rounds: int = 3) -> tuple[float, float]:
    """Readings/s through `ApplianceMeter.feed` (a washer from 1 s power samples with a register every 10 s, ticked
    as the daemon does), beside a bare loop that touches the same readings and ticks. Best of `rounds` each."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the trace builders live with the tests
    from koto.clock import Now
    from metering.energy import EnergySpec
    from metering.meter import ApplianceMeter
    from metering.profile import builtin_profile
    from tests.support.traces import build, washer_script

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
    _figure(name="metering core", value=best_core, unit="readings/s", baseline=best_bare,
            baseline_name="bare loop over the same readings")
    return best_core, best_bare


SECTIONS: dict[str, Callable[[argparse.Namespace], object]] = {
    "ledger": lambda a: bench_ledger(a.records, tuple(int(b) for b in a.batch.split(",")), a.rounds),
    "core": lambda a: bench_core(rounds=a.rounds),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", nargs="?", default="all", choices=[*SECTIONS, "all"])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--batch", default="1,10,100", help="batch sizes for the ledger, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    args = p.parse_args(argv)
    for name, fn in SECTIONS.items():
        if args.section in (name, "all"):
            fn(args)
    if args.json:
        from bench.figures import emit

        emit("metering", FIGURES, argv=["--json"])  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
