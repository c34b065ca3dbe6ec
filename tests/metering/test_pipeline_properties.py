"""The invariants of ARCHITECTURE §2 across the whole pipeline, for any sequence of readings and crashes (hypothesis):
readings -> ApplianceMeter (priced by Pricing) -> Ledger, batched with the meter's and the pricing's checkpoints in
the same transaction, as the daemon does. A crash drops whatever was not committed and restarts from the ledger.

At the end, read back from the ledger alone: the chain verifies, seq is contiguous, no interval is negative, the
partition records' energy equals the register's last minus first value exactly, and every appliance/function's
cost equals the tariff applied to its quantities (computed here independently), rounded half-even once.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koto.clock import Now
from koto.reading import Quantity, Reading
from koto.signing import generate_key
from metering.energy import EnergySpec
from metering.ledger import Ledger
from metering.meter import ApplianceMeter
from metering.pricing import Pricing
from metering.profile import builtin_profile
from metering.records import PARTITION_KINDS, USAGE_TYPE, Draft
from metering.tariff import Tariff
from tests.support.ledger_checks import assert_contiguous, conservation

S = 1_000_000_000
TARIFF = Tariff.from_dict({"id": "t", "version": 1, "currency": "EUR", "exponent": 2, "windows": [],
                           "rates": [{"match": "*/*", "per_kwh": "0.3125", "per_minute": "0.007"},
                                     {"match": "washer/*", "per_use": "0.45"}]})
PER_KWH, PER_MIN, PER_USE = Fraction("0.3125") * 100, Fraction("0.007") * 100, Fraction("0.45") * 100  # minor units

WASH = [(15_000, 60), (2_100_000, 300), (200_000, 120), (2_000, 5), (210_000, 120), (450_000, 120), (1_500, 200)]

step = st.one_of(
    st.tuples(st.just("power"), st.integers(1, 30), st.sampled_from([0, 2_000, 15_000, 200_000, 450_000, 2_100_000])),
    st.tuples(st.just("power"), st.integers(1, 30), st.integers(0, 2_600_000)),
    st.tuples(st.just("hold"), st.integers(10, 900), st.sampled_from([1_500, 15_000, 200_000, 450_000, 2_100_000])),
    st.tuples(st.just("wash"), st.just(0), st.integers(1, 10)),  # a whole washer programme, sampled every N s
    st.tuples(st.just("tick"), st.integers(1, 600), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
    st.tuples(st.just("crash"), st.integers(1, 200), st.just(0)),
)


class Gateway:
    """The daemon's meter loop in miniature: feed, batch, append with checkpoints, crash, restart."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "ledger.db"
        self.key = generate_key()
        self.spec = EnergySpec("register", "meter", max_gap_s=120)
        self.t = 10 * S
        self.wall = 1_790_000_000.0
        self.register = 7_000_000_000  # mWh on the meter's own register
        self.power = 0
        self.pending: list[Draft] = []
        self.baseline: int | None = None  # the first register value the ledger committed to
        self.open()

    def open(self) -> None:
        self.ledger = Ledger.open(self.path, gateway_id="gw-prop", key=self.key)
        self.pricing = Pricing(tz="Europe/Berlin", tariffs=[TARIFF])
        if (state := self.ledger.checkpoint("pricing")) is not None:
            self.pricing.restore(state)
        state = self.ledger.checkpoint("meter")
        self.meter = ApplianceMeter("washer", builtin_profile("washing_machine"), energy=self.spec,
                                    policy=self.pricing, interim_s=300, state=state)
        self.pending = []
        self.candidate: int | None = None  # the first register reading since this start

    def now(self) -> Now:
        return Now(self.t, self.wall, True, "boot-1")

    def advance(self, seconds: int) -> None:
        self.register += self.power * seconds // 3600  # what the meter's register really counts
        self.t += seconds * S
        self.wall += seconds

    def take(self, result: Any) -> None:
        self.pending.extend(result.drafts("household/washer"))

    def reading(self, q: Quantity, value: int) -> Reading:
        return Reading("meter", self.t, self.wall, "boot-1", q, value)

    def run(self, kind: str, seconds: int, value: int) -> None:
        if kind == "power":
            self.advance(seconds)
            self.power = value
            self.take(self.meter.feed(self.reading(Quantity.POWER_MW, value)))
            self.register_reading()
            self.take(self.meter.tick(self.now()))  # the daemon ticks every second
        elif kind == "hold":  # a steady draw sampled every 10 s
            for _ in range(seconds // 10):
                self.run("power", 10, value)
        elif kind == "wash":
            for watts, length in WASH:
                for _ in range(max(1, length // value)):
                    self.run("power", value, watts)
        elif kind == "tick":
            self.advance(seconds)
            self.take(self.meter.tick(self.now()))
        elif kind == "flush":
            self.flush()
        elif kind == "crash":  # kill -9: the uncommitted batch is gone; the world goes on while we are down
            self.ledger.close()
            self.advance(seconds)
            self.open()

    def register_reading(self) -> None:
        if self.candidate is None:
            self.candidate = self.register
        self.take(self.meter.feed(self.reading(Quantity.ENERGY_MWH, self.register)))

    def flush(self) -> None:
        if self.candidate is not None and self.baseline is None:
            self.baseline = self.candidate  # committed with this batch's checkpoint
        self.ledger.append(self.pending, checkpoints={"meter": self.meter.snapshot(),
                                                      "pricing": self.pricing.snapshot()})
        self.pending = []

    def stop(self) -> None:
        self.register_reading()
        self.take(self.meter.close(self.now()))
        self.flush()


def round_half_even(x: Fraction) -> int:
    return int((Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=80))
def test_for_any_readings_and_crashes_the_ledger_conserves_energy_chains_and_prices_exactly(steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(Path(tmp))
        for kind, seconds, value in steps:
            gw.run(kind, seconds, value)
        gw.stop()
        assert gw.ledger.verify(gw.key.public_key()).ok
        events = [r.event() for r in gw.ledger.iter_records()]
        gw.ledger.close()

    assert_contiguous(events)
    usage = [e["data"] for e in events if e["type"] == USAGE_TYPE]
    for d in usage:
        assert d["duration_ms"] >= 0 and d["end_mono_us"] >= d["start_mono_us"] and d["energy_mwh"] >= 0
    sums = conservation(events)
    if sums:
        total, start, end = sums["meter"]
        assert start == gw.baseline  # the first committed reading is the baseline: nothing before it is claimed
        assert end == gw.register  # the last reading closes the books
        assert total == end - start

    exact: dict[str, Fraction] = defaultdict(Fraction)
    billed: dict[str, int] = defaultdict(int)
    for d in usage:
        key = f"{d['appliance']}/{d['function']}"
        billed[key] += d.get("cost_minor", 0)
        if d["kind"] == "cycle":
            exact[key] += PER_USE * d["uses"]
        elif d["kind"] in PARTITION_KINDS and d["kind"] != "gap":
            exact[key] += PER_KWH * Fraction(d["energy_mwh"], 1_000_000) + PER_MIN * Fraction(d["duration_ms"], 60_000)
    assert {k: v for k, v in billed.items() if v} == {k: round_half_even(v) for k, v in exact.items()
                                                       if round_half_even(v)}
