"""Tariffs: strict dict form, most-specific rates, time-of-use windows (midnight, DST) and exact record costs."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from koto.canonical import canonical_bytes
from metering.errors import TariffError
from metering.tariff import Tariff, allocate
from tests.support.records import BERLIN, at, record

HOUR = 3600


def tariff(**over: Any) -> Tariff:
    d: dict[str, Any] = {
        "id": "home",
        "version": 1,
        "currency": "EUR",
        "rates": [
            {"match": "*", "per_kwh": "0.30"},
            {"match": "washer", "per_use": "0.50", "per_minute": "0.01"},
            {"match": "washer/heat", "per_kwh": "0.40"},
            {"match": "*/standby", "per_kwh": "0", "per_minute": "0"},
        ],
        "windows": [
            {"name": "night", "start": "22:00", "end": "06:00", "rates": [{"match": "*", "per_kwh": "0.20"}]},
        ],
    }
    d.update(over)
    return Tariff.from_dict(d, file="test.json")


# ---------------------------------------------------------------------------------------------- dict form


def test_dict_form_round_trips_and_is_canonical_json() -> None:
    t = tariff(appliances=["washer"], timezone="Europe/Berlin", exponent=3)
    d = t.to_dict()
    canonical_bytes(d)  # strings and integers only
    assert Tariff.from_dict(d) == t
    assert Tariff.from_dict(d).to_dict() == d
    assert d["rates"][0] == {"match": "*/*", "per_kwh": "0.30"}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"currency": "eur"}, "currency"),
        ({"version": 0}, "version"),
        ({"version": True}, "version"),
        ({"exponent": 9}, "exponent"),
        ({"colour": "red"}, "colour"),
        ({"rates": [{"match": "*", "per_kwh": 0.3}]}, "rates[0].per_kwh"),
        ({"rates": [{"match": "*", "per_kwh": "-1"}]}, "rates[0].per_kwh"),
        ({"rates": [{"match": "*", "per_kwh": "1e3"}]}, "rates[0].per_kwh"),
        ({"rates": [{"match": "a/b/c", "per_kwh": "1"}]}, "rates[0].match"),
        ({"rates": [{"match": "*"}]}, "rates[0]"),
        ({"rates": [{"match": "*", "per_kwh": "1"}, {"match": "*/*", "per_use": "1"}]}, "rates[1].match"),
        ({"windows": [{"name": "n", "start": "22:00", "end": "22:00", "rates": [{"match": "*", "per_kwh": "1"}]}]},
         "windows[0].end"),
        ({"windows": [{"name": "n", "start": "24:00", "end": "06:00", "rates": [{"match": "*", "per_kwh": "1"}]}]},
         "windows[0].start"),
        ({"windows": [{"name": "n", "days": ["mon", "Fri"], "start": "1:00", "end": "06:00",
                       "rates": [{"match": "*", "per_kwh": "1"}]}]}, "windows[0].days[1]"),
        ({"windows": [{"name": "n", "start": "01:00", "end": "06:00", "rates": []}]}, "windows[0].rates"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_bad_tariffs_are_refused_naming_the_file_and_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(TariffError) as err:
        tariff(**change)
    assert err.value.file == "test.json"
    assert err.value.key == key
    assert str(err.value).startswith(f"test.json: {key}: ")


def test_a_missing_key_is_named() -> None:
    with pytest.raises(TariffError, match="currency: is required"):
        Tariff.from_dict({"id": "x", "version": 1})


# ------------------------------------------------------------------------------------------------- rates


def test_most_specific_rule_wins_for_each_rate_separately() -> None:
    t = tariff()
    heat = t.rates_for("washer", "heat")
    assert (heat.per_kwh, heat.per_minute, heat.per_use) == (Decimal("0.40"), Decimal("0.01"), Decimal("0.50"))
    spin = t.rates_for("washer", "spin")  # washer/* adds per-minute and per-use, energy from *
    assert (spin.per_kwh, spin.per_minute, spin.per_use) == (Decimal("0.30"), Decimal("0.01"), Decimal("0.50"))
    kettle = t.rates_for("kettle", "boil")
    assert (kettle.per_kwh, kettle.per_minute, kettle.per_use) == (Decimal("0.30"), Decimal(0), Decimal(0))
    # an appliance outranks a function name: washer/* beats */standby for the minute rate
    assert t.rates_for("washer", "standby").per_minute == Decimal("0.01")
    assert t.rates_for("washer", "standby").per_kwh == 0


def test_a_window_overrides_only_the_rates_it_sets() -> None:
    t = tariff()
    night = t.windows[0]
    heat = t.rates_for("washer", "heat", night)
    assert heat.per_kwh == Decimal("0.20")  # the window's * beats the base washer/heat
    assert heat.per_use == Decimal("0.50")  # not set by the window: base rule


# ------------------------------------------------------------------------------------------------ windows


def test_a_window_crossing_midnight_covers_both_days() -> None:
    t = tariff()
    assert t.window_at(at(2024, 6, 3, 23, 30), BERLIN) is t.windows[0]
    assert t.window_at(at(2024, 6, 4, 5, 59, 59), BERLIN) is t.windows[0]
    assert t.window_at(at(2024, 6, 4, 6, 0), BERLIN) is None  # end is exclusive
    assert t.window_at(at(2024, 6, 4, 22, 0), BERLIN) is t.windows[0]  # start is inclusive


def test_a_window_from_0000_to_2400_is_the_whole_of_its_days() -> None:
    """What the error for start == end tells people to write (found by the pricing property test)."""
    rates = [{"match": "*", "per_kwh": "0.1"}]
    t = tariff(windows=[{"name": "monday", "days": ["mon"], "start": "00:00", "end": "24:00", "rates": rates}])
    assert not t.windows[0].crosses_midnight
    assert t.window_at(at(2024, 6, 2, 23, 59, 59), BERLIN) is None  # Sunday
    assert t.window_at(at(2024, 6, 3, 0, 0), BERLIN) is t.windows[0]  # 2024-06-03 is a Monday
    assert t.window_at(at(2024, 6, 3, 23, 59, 59), BERLIN) is t.windows[0]
    assert t.window_at(at(2024, 6, 4, 0, 0), BERLIN) is None
    segs = t.split(at(2024, 6, 2, 23), at(2024, 6, 4, 1), BERLIN)
    assert [(s.ms // 1000 // HOUR, s.window is not None) for s in segs] == [(1, False), (24, True), (1, False)]


def test_days_are_the_days_a_window_starts() -> None:
    rates = [{"match": "*", "per_kwh": "0.1"}]
    t = tariff(windows=[{"name": "mon-night", "days": ["mon"], "start": "22:00", "end": "06:00", "rates": rates}])
    # 2024-06-03 is a Monday
    assert t.window_at(at(2024, 6, 3, 1, 0), BERLIN) is None  # Sunday night's window: not Monday's
    assert t.window_at(at(2024, 6, 3, 23, 0), BERLIN) is not None
    assert t.window_at(at(2024, 6, 4, 1, 0), BERLIN) is not None  # Monday's window, on Tuesday morning
    assert t.window_at(at(2024, 6, 4, 23, 0), BERLIN) is None


def test_overlapping_windows_resolve_to_the_first_listed() -> None:
    a = {"name": "peak", "start": "17:00", "end": "20:00", "rates": [{"match": "*", "per_kwh": "0.5"}]}
    b = {"name": "evening", "start": "18:00", "end": "23:00", "rates": [{"match": "*", "per_kwh": "0.4"}]}
    t = tariff(windows=[a, b])
    assert [w.name if w else None for w in (t.window_at(at(2024, 6, 3, h), BERLIN) for h in (17, 19, 21, 23))] == [
        "peak", "peak", "evening", None]


def test_a_record_across_a_boundary_is_split_by_time() -> None:
    t = tariff()
    r = record("interim", at(2024, 6, 3, 21, 50), at(2024, 6, 3, 22, 5), function="spin", energy_mwh=300_001)
    segments = t.split(r.t_start_wall, r.t_end_wall, BERLIN)
    assert [(s.ms, s.window.name if s.window else None) for s in segments] == [(600_000, None), (300_000, "night")]
    # energy 200_001 mWh at 0.30 and 100_000 at 0.20 (largest remainder gives the odd mWh to the longer piece);
    # 15 minutes at 0.01 EUR/min, in cents
    expected = (Fraction(200_001 * 30, 10**6) + Fraction(100_000 * 20, 10**6)) + Fraction(15 * 1)
    assert t.exact_cost(r, BERLIN) == expected


def test_dst_nights_in_berlin_are_seven_and_nine_hours_long() -> None:
    t = tariff()
    for day, hours in ((29, 8), (30, 7)):  # clocks go forward in the night 30/31 March 2024
        segs = t.split(at(2024, 3, day, 21), at(2024, 3, day + 1, 7), BERLIN)
        assert [(s.ms // 1000 / HOUR, s.window is not None) for s in segs] == [(1, False), (hours, True), (1, False)]
    segs = t.split(at(2024, 10, 26, 21), at(2024, 10, 27, 7), BERLIN)  # clocks go back in the night 26/27 Oct
    assert [(s.ms // 1000 / HOUR, s.window is not None) for s in segs] == [(1, False), (9, True), (1, False)]


def test_dst_the_repeated_hour_is_inside_a_window_that_spans_it() -> None:
    rates = [{"match": "*", "per_kwh": "0.1"}]
    t = tariff(windows=[{"name": "early", "start": "02:00", "end": "03:00", "rates": rates}])
    first = at(2024, 10, 27, 2, 30, fold=0)
    second = at(2024, 10, 27, 2, 30, fold=1)
    assert second - first == HOUR
    assert t.window_at(first, BERLIN) is not None
    assert t.window_at(second, BERLIN) is not None
    # 02:00 first occurrence to 03:00 (which exists once): two real hours
    assert sum(s.ms for s in t.split(at(2024, 10, 27, 1), at(2024, 10, 27, 4), BERLIN) if s.window) == 2 * HOUR * 1000
    # in spring 02:00-03:00 does not exist, so the window is empty that night
    assert all(s.window is None for s in t.split(at(2024, 3, 31, 0), at(2024, 3, 31, 5), BERLIN))


def test_a_tariff_may_name_its_own_time_zone() -> None:
    t = tariff(timezone="America/New_York")
    assert t.window_at(at(2024, 6, 3, 23, 0, tz=ZoneInfo("America/New_York")), BERLIN) is not None
    assert t.window_at(at(2024, 6, 3, 23, 0), BERLIN) is None  # 17:00 in New York


# --------------------------------------------------------------------------------------------------- cost


def test_per_use_prices_go_on_cycle_records_at_the_window_where_the_use_started() -> None:
    rates = [{"match": "washer", "per_use": "0.25"}]
    t = tariff(windows=[{"name": "night", "start": "22:00", "end": "06:00", "rates": rates}])
    day_cycle = record("cycle", at(2024, 6, 3, 21, 30), at(2024, 6, 3, 23, 0), uses=1, energy_mwh=900_000)
    night_cycle = record("cycle", at(2024, 6, 3, 22, 30), at(2024, 6, 4, 0, 0), uses=2, energy_mwh=900_000)
    assert t.exact_cost(day_cycle, BERLIN) == 50  # cents; cycle energy is not charged again
    assert t.exact_cost(night_cycle, BERLIN) == 50


def test_a_cycle_without_a_function_pays_the_appliance_wide_per_use_price() -> None:
    t = tariff(rates=[{"match": "washer", "per_use": "0.50"}, {"match": "washer/heat", "per_use": "9"}])
    cycle = record("cycle", at(2024, 6, 3, 12), at(2024, 6, 3, 13), function="", uses=1)
    assert t.exact_cost(cycle, BERLIN) == 50


def test_gap_records_cost_nothing_and_partition_records_no_uses() -> None:
    t = tariff()
    assert t.exact_cost(record("gap", at(2024, 6, 3, 12), at(2024, 6, 3, 13), energy_mwh=5_000_000), BERLIN) == 0
    function = record("function", at(2024, 6, 3, 12), at(2024, 6, 3, 12, 1), function="spin", energy_mwh=1000)
    assert t.exact_cost(function, BERLIN) == Fraction(30, 1000) + 1  # 1 Wh at 30 ct/kWh + 1 minute at 1 ct


def test_a_backwards_wall_interval_prices_its_quantities_at_its_start() -> None:
    t = tariff()
    r = record("function", at(2024, 6, 3, 23), at(2024, 6, 3, 22, 59), function="spin", energy_mwh=1_000_000,
               duration_ms=60_000)
    assert t.exact_cost(r, BERLIN) == 20 + 1


@given(st.integers(-10**9, 10**12), st.lists(st.integers(0, 10**7), min_size=1, max_size=8))
def test_allocate_is_exact_and_proportional(total: int, weights: list[int]) -> None:
    shares = allocate(total, weights)
    assert sum(shares) == total
    span = sum(weights)
    if span:
        for share, w in zip(shares, weights, strict=True):
            assert abs(Fraction(share) - Fraction(total * w, span)) < 1
