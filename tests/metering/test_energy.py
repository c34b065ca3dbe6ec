"""Integer energy: the largest-remainder split, pulses to mWh, and register wrap/reset/swap/jump classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.energy import (
    FIRST,
    JUMP,
    MW_NS_PER_MWH,
    OK,
    RESET,
    SWAP,
    WRAP,
    Authority,
    EnergySpec,
    pulses_to_mwh,
    split_largest_remainder,
)

S = 1_000_000_000


def test_split_is_proportional_and_exact() -> None:
    assert split_largest_remainder(10, [1, 1, 2]) == [2, 3, 5]  # tie between the first two: the later wins
    assert split_largest_remainder(7, [0, 0]) == [0, 7]  # no weight: all to the latest
    assert split_largest_remainder(0, [3, 4]) == [0, 0]


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**15), min_size=1, max_size=8))
def test_split_always_sums_to_the_total(total: int, weights: list[int]) -> None:
    parts = split_largest_remainder(total, weights)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    if sum(weights):
        for p, w in zip(parts, weights, strict=True):
            assert abs(p - total * w / sum(weights)) < 1 + 1e-6 * total


def test_pulses_convert_from_the_cumulative_count() -> None:
    assert pulses_to_mwh(1, 1000) == 1000
    assert pulses_to_mwh(3, 800) == 3750
    # 1 pulse at 3 imp/kWh = 333333.33 mWh; the fraction is carried by the count, not lost
    assert sum(pulses_to_mwh(n + 1, 3) - pulses_to_mwh(n, 3) for n in range(3)) == 1_000_000


def reg(**kw: int) -> Authority:
    return Authority(EnergySpec("register", "m", step_mwh=10, **kw))


def test_register_normal_delta_and_first_baseline() -> None:
    a = reg()
    assert a.observe(5_000, 0, 3_000_000) == (FIRST, 0)
    assert a.observe(5_500, 60 * S, 3_000_000) == (OK, 500)


def test_register_wrap_is_counted_across() -> None:
    a = reg(wrap_mwh=2**32)
    a.observe(2**32 - 100, 0, 3_000_000)
    assert a.observe(50, 60 * S, 3_000_000) == (WRAP, 150)
    assert a.cont == 2**32 + 50


def test_register_reset_counts_from_zero_and_swap_rebases() -> None:
    a = reg()
    a.observe(10**9, 0, 3_000_000)
    assert a.observe(40, 60 * S, 3_000_000) == (RESET, 40)
    assert a.cont == 10**9 + 40
    b = reg()
    b.observe(10**9, 0, 3_000_000)
    assert b.observe(5 * 10**8, 60 * S, 3_000_000) == (SWAP, 0)
    assert b.cont == 10**9
    assert b.observe(5 * 10**8 + 7, 61 * S, 3_000_000) == (OK, 7)
    c = reg()
    c.observe(100, 0, 3_000_000)
    assert c.observe(200, S, 3_000_000, swapped=True) == (SWAP, 0)


@pytest.mark.xfail(strict=True, reason="open (2026-12-07 note): a one-reading dip is taken as a meter swap at once, "
                   "so the return to the true value is a jump whose delta (what the dip took away) is recorded again "
                   "as gap energy; needs the swap confirmed by a second reading (Authority state, checkpoint format, "
                   "tests/metering/test_meter_properties.py's model)")
def test_a_single_lower_reading_then_the_true_one_invents_no_energy() -> None:
    """A replayed BTHome advert (an old energy value; after a gateway restart the decoder's counter check starts
    afresh) or a glitched reply that passes its CRC shows the register lower once; the next reading is the true
    series again. Nothing flowed but the true delta: the continuous scale must advance by that alone."""
    a = reg()
    a.observe(10**9, 0, 3_000_000)
    a.observe(10**9 + 500, S, 3_000_000)
    a.observe(9 * 10**8, 2 * S, 3_000_000)  # the dip: 100 kWh lower, once
    a.observe(10**9 + 1_000, 3 * S, 3_000_000)
    assert a.cont == 10**9 + 1_000  # today: 1,100,001,500 (100 kWh counted twice, as an implausible jump)


def test_register_jump_beyond_plausible_is_flagged_with_its_delta() -> None:
    a = reg()
    a.observe(0, 0, 3_000_000)
    limit = 3_000_000 * 60 * S * 2 // MW_NS_PER_MWH + 10
    assert a.observe(limit, 60 * S, 3_000_000) == (OK, limit)
    assert a.observe(limit + limit + 1, 60 * S, 3_000_000) == (JUMP, limit + 1)  # dt: since the last reading


def test_authority_snapshot_round_trip() -> None:
    a = reg(wrap_mwh=1000)
    a.observe(990, 0, 3_000_000)
    a.observe(5, S, 3_000_000)
    b = reg(wrap_mwh=1000)
    b.restore(a.snapshot())
    assert b.cont == a.cont and b.observe(6, 2 * S, 3_000_000) == (OK, 1)
