"""The function detector and the cycle tracker: hysteresis, dwell, priority, signals, pauses."""

from __future__ import annotations

from pathlib import Path

from metering.detect import (
    CANDIDATE,
    CYCLE_BACK,
    CYCLE_ENDED,
    CYCLE_LOW,
    CYCLE_STARTED,
    DROPPED,
    NO_CHANGE,
    NO_TIME,
    CycleTracker,
    Detector,
)
from metering.profile import CycleRule, builtin_profile, load_profile, parse_profile

S = 1_000_000_000
WASHER = load_profile(Path(__file__).parent / "data" / "detector_washer.toml")


def washer() -> Detector:
    return Detector(WASHER, {})


def feed(d: Detector, trace: list[tuple[float, float]]) -> list[str]:
    """(seconds, watts) readings; returns the function after each."""
    out = []
    for t, w in trace:
        d.update(round(t * S), round(w * 1000))
        out.append(d.function)
    return out


def test_first_reading_picks_the_matching_function_at_once() -> None:
    d = washer()
    assert d.update(0, 2_000) >= 0 and d.function == "standby"


def test_hysteresis_keeps_the_function_inside_its_off_band() -> None:
    d = washer()
    d.start(2_100_000)
    # heat: on at 1200 W, off below 900 W — 1000 W is not enough to enter but enough to stay
    assert feed(d, [(i, 1000) for i in range(30)])[-1] == "heat"


def test_a_pause_shorter_than_the_dwell_does_not_switch() -> None:
    d = washer()
    d.start(180_000)
    seq = feed(d, [(0, 180), (1, 10), (2, 10), (3, 10), (4, 180), (5, 180)])
    assert set(seq) == {"wash"}


def test_switch_needs_min_off_of_the_old_and_min_on_of_the_new() -> None:
    d = washer()
    d.start(180_000)  # wash: min_off 8 s; spin: min_on 8 s
    assert d.update(0, 450_000) == CANDIDATE
    assert d.update(5 * S, 450_000) == NO_CHANGE
    assert d.function == "wash" and d.cand_since == 0
    assert d.update(8 * S, 450_000) == d.names.index("spin")
    assert d.function == "spin"


def test_candidate_dropped_when_the_function_holds_again() -> None:
    d = washer()
    d.start(180_000)
    assert d.update(0, 10_000) == CANDIDATE
    assert d.update(S, 180_000) == DROPPED
    assert d.update(2 * S, 180_000) == NO_CHANGE


def test_nothing_matching_means_the_unmatched_function() -> None:
    d = washer()
    d.start(5_000)  # between standby (<= 4 W) and fill (>= 6 W)
    assert d.function == "other"
    assert d.update(S, 20_000) == CANDIDATE
    feed(d, [(7, 20)])
    assert d.function == "fill"


def test_signal_rules_follow_the_signal() -> None:
    signals: dict[str, str] = {}
    d = Detector(builtin_profile("air_conditioner"), signals)
    d.start(800_000)
    assert d.function == "other"  # compressor power but no mode yet
    signals["mode"] = "cool"
    feed(d, [(0, 800), (10, 800)])
    assert d.function == "cool"
    signals["mode"] = "heat"
    feed(d, [(11, 800), (41, 800)])
    assert d.function == "heat"


def test_priority_is_file_order_among_entering_functions() -> None:
    p = parse_profile({"name": "x", "max_power_w": 10, "function": [
        {"name": "first", "on_above_w": 5}, {"name": "second", "on_above_w": 1}]})
    d = Detector(p, {})
    d.start(7_000)
    assert d.function == "first"


def test_snapshot_restore_keeps_a_pending_candidate() -> None:
    d = washer()
    d.start(180_000)
    d.update(0, 450_000)
    e = washer()
    e.restore(d.snapshot())
    assert e.update(8 * S, 450_000) == e.names.index("spin")


def test_cycle_start_must_be_sustained_and_pauses_stay_inside() -> None:
    c = CycleTracker(CycleRule(start_mw=6_000, start_ns=10 * S, end_mw=5_000, end_ns=120 * S))
    assert c.update(0, 20_000) == 0
    assert c.update(5 * S, 3_000) == 0 and not c.running  # dipped: start cancelled
    c.update(6 * S, 20_000)
    assert c.update(16 * S, 20_000) == CYCLE_STARTED and c.running
    assert c.update(20 * S, 1_000) == CYCLE_LOW and c.fall == 20 * S  # the use may end here
    assert c.update(100 * S, 1_000) == 0  # an 80 s pause
    assert c.update(101 * S, 180_000) == CYCLE_BACK and c.running and c.fall == NO_TIME  # it was a pause
    assert c.update(200 * S, 1_000) == CYCLE_LOW
    assert c.update(319 * S, 1_000) == 0 and c.fall == 200 * S
    assert c.update(320 * S, 1_000) == CYCLE_ENDED and not c.running


def test_a_use_left_on_after_its_programme_ends_after_the_left_on_dwell() -> None:
    """A machine left on at its electronics' level (between end_below and left_on_below) ends its use after
    left_on_for; a pause there shorter than that, or flickering across end_below, stays inside the use."""
    rule = CycleRule(start_mw=8_000, start_ns=10 * S, end_mw=3_500, end_ns=90 * S, left_on_mw=8_000,
                     left_on_ns=1200 * S)
    c = CycleTracker(rule)
    c.update(0, 200_000)
    assert c.update(10 * S, 200_000) == CYCLE_STARTED
    assert c.update(11 * S, 5_000) == CYCLE_LOW
    assert all(c.update(t * S, 5_000) == 0 for t in range(12, 811))  # a 13-minute pause at 5 W: still the use
    assert c.update(811 * S, 150_000) == CYCLE_BACK and c.running
    assert c.update(812 * S, 2_000) == CYCLE_LOW and c.fall == 812 * S  # where the programme ended
    for t in range(813, 812 + 1200):  # left on, flickering 2/4 W: never 90 s below 3.5 W
        assert c.update(t * S, 2_000 if t % 60 < 40 else 4_000) == 0, t
    assert c.fall == 812 * S
    d = CycleTracker(rule)
    d.restore(c.snapshot())  # the left-on dwell is checkpointed
    assert d.update(2012 * S, 4_000) == CYCLE_ENDED and not d.running
    assert all(d.update(t * S, 6_000) == 0 for t in range(2013, 2100)) and not d.running  # no use starts at 6 W
    plain = CycleTracker(CycleRule(start_mw=8_000, start_ns=0, end_mw=3_500, end_ns=90 * S))
    plain.update(0, 200_000)
    assert all(plain.update(t * S, 5_000) == 0 for t in range(1, 5000)) and plain.running  # no left-on rule


def test_no_cycle_rule_never_starts() -> None:
    c = CycleTracker(None)
    assert c.update(0, 10**9) == 0 and c.update(10**12, 10**9) == 0


def _phased() -> Detector:
    """Tumbling (wide band, pauses) vs spin (continuous, takes over; listed after wash, so it is reached only by
    taking over), and rinse only after a spin."""
    return Detector(parse_profile({
        "name": "w", "max_power_w": 3000, "cycle": {"start_above_w": 5, "end_below_w": 2, "end_for_s": 60},
        "function": [
            {"name": "rinse", "on_above_w": 40, "off_below_w": 3, "on_below_w": 1000, "min_on_s": 2,
             "only_after": "spin"},
            {"name": "wash", "on_above_w": 40, "off_below_w": 3, "on_below_w": 1000, "min_on_s": 2},
            {"name": "spin", "on_above_w": 100, "off_below_w": 40, "on_below_w": 1000, "min_on_s": 30,
             "min_off_s": 5, "takes_over": ["wash", "rinse"]},
            {"name": "standby", "on_below_w": 2},
        ]}), {})


def test_a_continuous_phase_takes_over_one_whose_band_still_holds() -> None:
    d = _phased()
    d.start(1_000)
    tumble = [(t, 200 if t % 15 < 11 else 5) for t in range(0, 120)]
    assert set(feed(d, tumble)[3:]) == {"wash"}  # bursts at spin power never last 30 s
    assert d.update(120 * S, 180_000) == CANDIDATE  # wash still holds, but spin's band does: a candidate
    assert d.cand_since == 120 * S
    feed(d, [(t, 180) for t in range(121, 150)])
    assert d.function == "wash"
    assert d.update(150 * S, 180_000) == d.names.index("spin") and d.function == "spin"


def test_a_take_over_that_does_not_last_is_dropped() -> None:
    d = _phased()
    d.start(60_000)
    assert d.update(0, 180_000) == CANDIDATE
    assert d.update(S, 60_000) == DROPPED and d.function == "wash" and d.cand < 0


def test_only_after_waits_for_the_named_function_in_this_use() -> None:
    d = _phased()
    d.start(1_000)
    feed(d, [(t, 60) for t in range(5)])
    assert d.function == "wash"  # no spin yet: not a rinse
    feed(d, [(t, 300) for t in range(5, 40)] + [(t, 1) for t in range(40, 50)] + [(t, 60) for t in range(50, 60)])
    assert d.function == "rinse"  # after a spin, the same tumbling is a rinse
    d.new_use()  # the next use starts while idle: no spin in it yet
    feed(d, [(t, 1) for t in range(60, 70)] + [(t, 60) for t in range(70, 80)])
    assert d.function == "wash"


def test_the_functions_run_in_a_use_survive_a_snapshot() -> None:
    d = _phased()
    d.start(1_000)
    feed(d, [(t, 300) for t in range(40)] + [(t, 1) for t in range(40, 50)])
    snap = d.snapshot()
    assert set(snap.seen.split(",")) == {"standby", "wash", "spin"}  # wash first, then spin took over
    e = _phased()
    e.restore(snap)
    feed(e, [(t, 60) for t in range(50, 60)])
    assert e.function == "rinse"


def test_a_use_ends_where_the_confirming_rule_s_low_spell_began() -> None:
    """A passive drying at 2.8 W (below the left-on level, above the end level) for 40 minutes, then rest below the
    end level: the left-on hour passes during the rest, but the power is below the end level then, so the end rule
    decides, and the use ended where the rest began, not where the drying did. Left on at 4 W, it ends where the
    power fell to 4 W."""
    rule = CycleRule(start_mw=5_000, start_ns=20 * S, end_mw=2_500, end_ns=1800 * S, left_on_mw=5_000,
                     left_on_ns=3600 * S)
    c = CycleTracker(rule)
    c.update(0, 60_000)
    assert c.update(20 * S, 60_000) == CYCLE_STARTED
    assert c.update(100 * S, 2_800) == CYCLE_LOW and c.fall == 100 * S  # the drying
    assert all(c.update(t * S, 2_800) == 0 for t in range(101, 2500))
    assert all(c.update(t * S, 500) == 0 for t in range(2500, 4300))  # at rest; the left-on hour is up at 3700
    assert c.update(4300 * S, 500) == CYCLE_ENDED and c.since == 2500 * S
    d = CycleTracker(rule)
    d.update(0, 60_000)
    d.update(20 * S, 60_000)
    assert d.update(100 * S, 4_000) == CYCLE_LOW
    assert all(d.update(t * S, 4_000) == 0 for t in range(101, 3700))
    assert d.update(3700 * S, 4_000) == CYCLE_ENDED and d.since == 100 * S
