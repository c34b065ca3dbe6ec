"""Pricing: cost equals the tariff applied to the quantities, rounded by the one documented rule; the Policy seam."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koto.canonical import canonical_bytes, rfc3339
from metering.entitlement import Entitlement
from metering.errors import TariffError
from metering.policy import Policy
from metering.pricing import Pricing
from metering.records import RecordKind, UsageRecord
from metering.tariff import Tariff
from tests.support.records import BERLIN, at, record

HOUR_MS = 3_600_000
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
APPLIANCE_FUNCTIONS = [("washer", "heat"), ("washer", "spin"), ("washer", "standby"), ("kettle", "boil")]
MATCHES = ["*", "washer", "washer/heat", "*/standby", "kettle/boil", "*/spin"]

WORKED = {
    "id": "home-2026",
    "version": 3,
    "currency": "EUR",
    "rates": [
        {"match": "*", "per_kwh": "0.32"},
        {"match": "washer", "per_use": "0.50"},
        {"match": "washer/heat", "per_kwh": "0.40"},
    ],
    "windows": [{"name": "night", "start": "22:00", "end": "06:00", "rates": [{"match": "*", "per_kwh": "0.20"}]}],
}


def test_pricing_is_the_meters_policy() -> None:
    policy: Policy = Pricing(tz="Europe/Berlin")
    r = record("function", at(2026, 3, 2, 12), at(2026, 3, 2, 12, 1), energy_mwh=1000)
    policy.price(r)  # no tariff yet: stamped unpriced, never refused
    assert (r.tariff_id, r.tariff_version, r.currency, r.cost_minor, r.entitled) == ("", 0, "", 0, "")
    assert "cost_minor" not in r.data()


# ------------------------------------------------------------------------------------- the worked example


def test_worked_example_from_docs_pricing_md() -> None:
    p = Pricing(tz="Europe/Berlin", tariffs=[Tariff.from_dict(WORKED)])
    recs = [
        record("interim", at(2026, 3, 2, 21, 50), at(2026, 3, 2, 22, 5), function="heat", energy_mwh=333_333,
               cycle_id="c1"),
        record("function", at(2026, 3, 2, 22, 5), at(2026, 3, 2, 22, 10), function="heat", energy_mwh=111_111,
               cycle_id="c1"),
        record("function", at(2026, 3, 2, 22, 10), at(2026, 3, 2, 22, 20), function="spin", energy_mwh=100_000,
               cycle_id="c1"),
        record("cycle", at(2026, 3, 2, 21, 50), at(2026, 3, 2, 22, 20), function="", uses=1,
               energy_mwh=544_444, cycle_id="c1"),
        record("gap", at(2026, 3, 2, 22, 20), at(2026, 3, 2, 23, 0), energy_mwh=5_000),
    ]
    kettle = [record("function", at(2026, 3, 2, 8, m), at(2026, 3, 2, 8, m + 1), appliance="kettle", function="boil",
                     energy_mwh=15_625) for m in (0, 10, 20)]
    for r in recs + kettle:
        p.price(r)
    assert [p_exact for p_exact in (Fraction("11.1111"), Fraction("2.22222"))] == [
        Tariff.from_dict(WORKED).exact_cost(r, BERLIN) for r in recs[:2]]
    assert [r.cost_minor for r in recs] == [11, 2, 2, 50, 0]
    assert all((r.tariff_id, r.tariff_version, r.currency) == ("home-2026", 3, "EUR") for r in recs)
    assert [r.cost_minor for r in kettle] == [0, 1, 1]  # 0.5 ct each: running total 0.5 -> 0, 1.0 -> 1, 1.5 -> 2


# ------------------------------------------------------------------------------------------- the property


@dataclass
class Case:
    tariff: dict[str, Any]
    records: list[UsageRecord]
    restart_at: int


def _decimal_text(n: int, places: int) -> str:
    return format(Decimal(n).scaleb(-places), "f")


rate_value = st.builds(_decimal_text, st.integers(0, 99_999), st.integers(0, 5))


@st.composite
def rules(draw: st.DrawFn, min_size: int = 0) -> list[dict[str, Any]]:
    matches = draw(st.lists(st.sampled_from(MATCHES), min_size=min_size, max_size=4, unique=True))
    out = []
    for m in matches:
        keys = draw(st.lists(st.sampled_from(["per_kwh", "per_minute", "per_use"]), min_size=1, max_size=3,
                             unique=True))
        out.append({"match": m, **{k: draw(rate_value) for k in keys}})
    return out


@st.composite
def cases(draw: st.DrawFn) -> Case:
    windows = []
    for i in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, 23))
        end = draw(st.integers(1, 24).filter(lambda e: e != start))  # noqa: B023 (drawn at once)
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
        windows.append({"name": f"w{i}", "days": days, "start": f"{start:02d}:00", "end": f"{end:02d}:00",
                        "rates": draw(rules(min_size=1))})
    tariff = {"id": "t", "version": 1, "currency": "EUR", "exponent": draw(st.integers(0, 3)),
              "rates": draw(rules()), "windows": windows}
    around = draw(st.sampled_from([(2024, 3, 31), (2024, 10, 27), (2024, 6, 5)]))
    t = round(at(*around) * 1000) + draw(st.integers(-30 * HOUR_MS, 30 * HOUR_MS))
    records = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["function", "interim", "interim", "gap", "cycle"]))
        appliance, function = draw(st.sampled_from(APPLIANCE_FUNCTIONS))
        length = draw(st.integers(0, 900_000))
        duration = max(length + draw(st.integers(-2000, 2000)), 0)
        energy = draw(st.integers(0, 600_000))
        if kind == "cycle":
            start = t - draw(st.integers(0, 4 * HOUR_MS))
            function = draw(st.sampled_from(["", function]))  # the meter writes cycles with no function
            records.append(record(kind, start / 1000, t / 1000, appliance=appliance, function=function,
                                  uses=draw(st.integers(1, 2)), energy_mwh=energy))
            continue
        records.append(record(kind, t / 1000, (t + length) / 1000, appliance=appliance, function=function,
                              energy_mwh=energy, duration_ms=duration))
        t += length
    return Case(tariff, records, draw(st.integers(0, len(records))))


def oracle_window(tariff: dict[str, Any], t_ms: int) -> int | None:
    """Which window is in force, read off the local clock hour (windows in the test start and end on the hour)."""
    local = datetime.fromtimestamp(t_ms // 1000, BERLIN)
    day, prev = DAYS[local.weekday()], DAYS[(local.weekday() - 1) % 7]
    for i, w in enumerate(tariff["windows"]):
        start, end = int(w["start"][:2]), int(w["end"][:2])
        if end > start:
            inside = day in w["days"] and start <= local.hour < end
        else:
            inside = (day in w["days"] and local.hour >= start) or (prev in w["days"] and local.hour < end)
        if inside:
            return i
    return None


def oracle_rate(tariff: dict[str, Any], window: int | None, appliance: str, function: str, key: str) -> Fraction:
    def best(rule_list: list[dict[str, Any]]) -> Fraction | None:
        found: tuple[int, Fraction] | None = None
        for r in rule_list:
            a, _, f = (r["match"] + "/*").partition("/") if "/" not in r["match"] else r["match"].partition("/")
            if key in r and a in ("*", appliance) and f in ("*", function):
                rank = 2 * (a != "*") + (f != "*")
                if found is None or rank > found[0]:
                    found = (rank, Fraction(r[key]))
        return None if found is None else found[1]

    in_window = best(tariff["windows"][window]["rates"]) if window is not None else None
    if in_window is not None:
        return in_window
    base = best(tariff["rates"])
    return Fraction(0) if base is None else base


def oracle_split(total: int, weights: list[int]) -> list[int]:
    if sum(weights) == 0:
        return [total] + [0] * (len(weights) - 1)
    exact = [Fraction(total * w, sum(weights)) for w in weights]
    shares = [int(x) for x in exact]  # totals are never negative here
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def oracle_cost(tariff: dict[str, Any], r: UsageRecord) -> Fraction:
    """The tariff applied to the record's quantities, computed without `metering.tariff`."""
    scale: int = 10 ** tariff["exponent"]
    a, b = round(r.t_start_wall * 1000), round(r.t_end_wall * 1000)
    if r.kind == RecordKind.GAP:
        return Fraction(0)
    if r.kind == RecordKind.CYCLE:
        per_use = oracle_rate(tariff, oracle_window(tariff, a), r.appliance, r.function, "per_use")
        return Fraction(r.uses) * per_use * scale
    runs: list[tuple[int | None, int]] = []
    if b <= a:
        runs = [(oracle_window(tariff, a), 0)]
    cut = a
    while cut < b:  # hour by hour: Berlin's offsets are whole hours, so window status only changes on UTC hours
        nxt = min((cut // HOUR_MS + 1) * HOUR_MS, b)
        w = oracle_window(tariff, cut)
        runs = [*runs[:-1], (w, runs[-1][1] + nxt - cut)] if runs and runs[-1][0] == w else [*runs, (w, nxt - cut)]
        cut = nxt
    weights = [n for _, n in runs]
    total = Fraction(0)
    for (w, _), e, d in zip(runs, oracle_split(r.energy_mwh, weights), oracle_split(r.duration_ms, weights),
                            strict=True):
        total += e * oracle_rate(tariff, w, r.appliance, r.function, "per_kwh") / 1_000_000
        total += d * oracle_rate(tariff, w, r.appliance, r.function, "per_minute") / 60_000
    return total * scale


def round_half_even(x: Fraction) -> int:
    whole, rest = divmod(x.numerator, x.denominator)
    twice = 2 * rest
    if twice > x.denominator or (twice == x.denominator and whole % 2):
        whole += 1
    return whole


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_cost_equals_the_tariff_applied_to_the_quantities(case: Case) -> None:
    tariff = Tariff.from_dict(case.tariff)
    p = Pricing(tz=BERLIN, tariffs=[tariff])
    exact: dict[str, Fraction] = {}
    charged: dict[str, int] = {}
    for i, r in enumerate(case.records):
        if i == case.restart_at:  # a restart in the middle continues every running total exactly
            state = json.loads(json.dumps(p.snapshot()))
            p = Pricing(tz="Europe/Berlin")
            p.restore(state)
        p.price(r)
        key = f"{r.appliance}/{r.function}"
        want = oracle_cost(case.tariff, r)
        assert (r.tariff_id, r.tariff_version, r.currency) == ("t", 1, "EUR")
        # Within one minor unit: exactly one when the old total rounded down on a tie and the new one up on a tie
        # (8.5 -> 8, then 25.5 -> 26: a record of exact cost 17 costs 18); the running total below is the rule.
        assert abs(r.cost_minor - want) <= 1
        exact[key] = exact.get(key, Fraction(0)) + want
        charged[key] = charged.get(key, 0) + r.cost_minor
        assert charged[key] == round_half_even(exact[key])  # at every moment, per appliance/function


# --------------------------------------------------------------------------------------- tariff selection


def test_apply_tariff_is_applied_duplicate_or_stale_by_version() -> None:
    p = Pricing()
    t1 = Tariff.from_dict(WORKED)
    assert p.apply_tariff(t1).status == "applied"
    assert p.apply_tariff(Tariff.from_dict(WORKED)).status == "duplicate"
    assert p.apply_tariff(Tariff.from_dict({**WORKED, "version": 2})).status == "stale"
    conflict = p.apply_tariff(Tariff.from_dict({**WORKED, "currency": "CHF"}))
    assert conflict.status == "stale" and "different content" in conflict.reason
    assert p.apply_tariff(Tariff.from_dict({**WORKED, "version": 4, "currency": "CHF"})).applied
    assert p.tariff_for("washer") is not None and p.tariff_for("washer").currency == "CHF"  # type: ignore[union-attr]


def test_an_appliance_tariff_beats_the_default_and_the_last_applied_wins() -> None:
    default = Tariff.from_dict({**WORKED, "id": "default"})
    washer = Tariff.from_dict({**WORKED, "id": "washer-special", "appliances": ["washer"]})
    newer_default = Tariff.from_dict({**WORKED, "id": "default-2"})
    p = Pricing(tariffs=[default, washer, newer_default])
    assert p.tariff_for("washer") is washer
    assert p.tariff_for("kettle") is newer_default
    assert p.apply_tariff(Tariff.from_dict({**WORKED, "id": "default", "version": 4})).applied
    assert p.tariff_for("kettle").id == "default"  # type: ignore[union-attr]


def test_gap_records_are_stamped_with_the_tariff_and_cost_nothing() -> None:
    p = Pricing(tz="Europe/Berlin", tariffs=[Tariff.from_dict(WORKED)], gated=["washer"])
    gap = record("gap", at(2026, 3, 2, 12), at(2026, 3, 2, 13), energy_mwh=9_000_000)
    p.price(gap)
    assert (gap.tariff_id, gap.currency, gap.cost_minor, gap.entitled) == ("home-2026", "EUR", 0, "")
    assert gap.data()["cost_minor"] == 0


def test_unentitled_use_is_priced_and_flagged_never_dropped() -> None:
    p = Pricing(tz="Europe/Berlin", tariffs=[Tariff.from_dict(WORKED)], gated=["washer"])
    assert not p.allows("washer", "heat", at(2026, 3, 2, 12)).entitled
    r = record("function", at(2026, 3, 2, 12), at(2026, 3, 2, 12, 15), function="heat", energy_mwh=250_000)
    p.price(r)
    assert (r.entitled, r.entitlement_id, r.cost_minor) == ("no", "", 10)


# ---------------------------------------------------------------------------------------- snapshot/restore


def test_snapshot_restore_continues_consumption_and_rounding_exactly() -> None:
    grant = Entitlement.from_dict({"id": "g", "version": 1, "appliance": "kettle", "kind": "kwh", "limit": "0.05"})
    boils = [record("function", at(2026, 3, 2, 8, m), at(2026, 3, 2, 8, m + 1), appliance="kettle", function="boil",
                    energy_mwh=15_625) for m in range(0, 50, 10)]

    def run(restart: bool) -> list[tuple[int, str]]:
        p = Pricing(tz="Europe/Berlin", tariffs=[Tariff.from_dict(WORKED)], entitlements=[grant])
        out = []
        for i, r in enumerate(boils):
            if restart and i == 2:
                state = p.snapshot()
                canonical_bytes(state)  # strings and integers only
                p = Pricing(tz="Europe/Berlin")
                p.restore(json.loads(json.dumps(state)))
                assert p.snapshot() == state
            copy = record("function", r.t_start_wall, r.t_end_wall, appliance="kettle", function="boil",
                          energy_mwh=r.energy_mwh)
            p.price(copy)
            out.append((copy.cost_minor, copy.entitled))
        return out

    assert run(restart=True) == run(restart=False)
    # 15.625 Wh per boil against 50 Wh: the fourth boil starts with 3.125 Wh left, the fifth finds it used up
    # running totals 0.5 1.0 1.5 2.0 2.5 round half-even to 0 1 2 2 2
    assert run(restart=False) == [(0, "yes"), (1, "yes"), (1, "yes"), (0, "yes"), (0, "no")]


def test_restore_refuses_an_unknown_snapshot_format() -> None:
    with pytest.raises(TariffError, match="format"):
        Pricing().restore({"format": 99})


def test_entitlement_commands_go_through_pricing() -> None:
    p = Pricing(tz="Europe/Berlin")
    until = rfc3339(at(2026, 4, 1))
    grant = Entitlement.from_dict({"id": "g", "version": 2, "appliance": "washer", "kind": "until",
                                   "valid_until": until})
    assert p.apply_entitlement(grant).applied
    assert p.apply_entitlement(grant).status == "duplicate"
    assert p.allows("washer", "spin", at(2026, 3, 2, 12)).entitlement_id == "g"
    assert not p.allows("washer", "spin", at(2026, 4, 1)).entitled


# ------------------------------------------------------------------------------------ with the real meter


def test_the_meter_prices_and_entitles_a_washer_run_through_pricing() -> None:
    from metering.energy import EnergySpec
    from metering.meter import ApplianceMeter, FeedResult
    from metering.profile import builtin_profile
    from tests.support.traces import T0_WALL, build, run, washer_script

    tariff = Tariff.from_dict({**WORKED, "appliances": ["washer"]})
    one_use = Entitlement.from_dict({"id": "one", "version": 1, "appliance": "washer", "function": "*",
                                     "kind": "uses", "limit": 1})
    pricing = Pricing(tz="Europe/Berlin", tariffs=[tariff], entitlements=[one_use])
    meter = ApplianceMeter("washer", builtin_profile("washing_machine"),
                           energy=EnergySpec(kind="power", source="washer-plug"), policy=pricing, interim_s=120)
    results = run(meter, build(washer_script(), source="washer-plug"))
    records = [r for res in results if isinstance(res, FeedResult) for r in res.records]
    assert {r.kind for r in records} >= {RecordKind.FUNCTION, RecordKind.INTERIM, RecordKind.CYCLE}
    assert all((r.tariff_id, r.tariff_version, r.currency) == ("home-2026", 3, "EUR") for r in records)
    (cycle,) = [r for r in records if r.kind == RecordKind.CYCLE]
    assert (cycle.cost_minor, cycle.entitled, cycle.entitlement_id) == (50, "yes", "one")
    by_key: dict[str, list[UsageRecord]] = {}
    for r in records:
        by_key.setdefault(f"{r.appliance}/{r.function}", []).append(r)
    for key_records in by_key.values():
        exact = sum((tariff.exact_cost(r, BERLIN) for r in key_records), Fraction(0))
        assert sum(r.cost_minor for r in key_records) == round_half_even(exact)
    energy = sum(r.energy_mwh for r in records if r.kind != RecordKind.CYCLE and r.kind != RecordKind.GAP)
    assert energy > 0 and sum(r.cost_minor for r in records if r.kind != RecordKind.CYCLE) > 0
    assert pricing.entitlements.consumption("one").uses == 1
    assert not pricing.allows("washer", "fill", T0_WALL + 86_400).entitled  # the one use is spent
