"""Integer energy: the largest-remainder split, pulses to mWh, and register wrap/reset/swap/jump classification."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metering.energy import (
    DIP,
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


def test_register_reset_counts_from_zero_and_swap_rebases_once_a_second_reading_confirms_it() -> None:
    a = reg()
    a.observe(10**9, 0, 3_000_000)
    assert a.observe(40, 60 * S, 3_000_000) == (DIP, 0)  # held: one lower reading is not believed yet
    assert a.cont == 10**9
    assert a.observe(45, 61 * S, 3_000_000) == (RESET, 45)  # confirmed: counted from zero, to this reading
    assert a.cont == 10**9 + 45
    b = reg()
    b.observe(10**9, 0, 3_000_000)
    assert b.observe(5 * 10**8, 60 * S, 3_000_000) == (DIP, 0)
    assert b.observe(5 * 10**8 + 7, 61 * S, 3_000_000) == (SWAP, 7)  # re-based at the held value, 7 since
    assert (b.rebase_raw, b.cont) == (5 * 10**8, 10**9 + 7)
    assert b.observe(5 * 10**8 + 9, 62 * S, 3_000_000) == (OK, 2)
    c = reg()
    c.observe(100, 0, 3_000_000)
    assert c.observe(200, S, 3_000_000, swapped=True) == (SWAP, 0)  # the meter said it changed: believed at once
    p = Authority(EnergySpec(kind="pulses", source="s0", imp_per_kwh=1000))
    p.observe(500, 0, 3_000_000)
    assert p.observe(2, S, 3_000_000) == (RESET, 2000)  # a pulse count is the gateway's own: no dip to hold


def test_a_held_dip_followed_by_a_lower_reading_holds_that_one_instead() -> None:
    a = reg()
    a.observe(10**9, 0, 3_000_000)
    assert a.observe(8 * 10**8, S, 3_000_000) == (DIP, 0)
    assert a.observe(6 * 10**8, 2 * S, 3_000_000) == (DIP, 0)  # lower than the held one: it is held instead
    assert a.observe(6 * 10**8 + 1, 3 * S, 3_000_000) == (SWAP, 1)
    assert a.cont == 10**9 + 1


def test_a_single_lower_reading_then_the_true_one_invents_no_energy() -> None:
    """A replayed BTHome advert (an old energy value; after a gateway restart the decoder's counter check starts
    afresh) or a glitched reply that passes its CRC shows the register lower once; the next reading is the true
    series again. Nothing flowed but the true delta: the continuous scale advances by that alone. (Believed at once,
    the dip was a swap and the return an implausible jump: 1,100,001,500, 100 kWh counted twice.)"""
    a = reg()
    a.observe(10**9, 0, 3_000_000)
    a.observe(10**9 + 500, S, 3_000_000)
    assert a.observe(9 * 10**8, 2 * S, 3_000_000) == (DIP, 0)  # the dip: 100 kWh lower, once
    assert a.observe(10**9 + 1_000, 3 * S, 3_000_000) == (OK, 500)
    assert a.cont == 10**9 + 1_000
    assert a.observe(0, 4 * S, 3_000_000) == (DIP, 0)  # a reply of zeros (a brownout) is no reset either
    assert a.observe(10**9 + 1_200, 5 * S, 3_000_000) == (OK, 200)


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
