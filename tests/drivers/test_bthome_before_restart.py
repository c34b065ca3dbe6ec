"""An advert recorded before a BTHome device restarted its count, played back after Koto read the restart.

A counter carries no epoch: when the plug was at 80_199 and restarts its count (now at 250), an advert recorded at
80_100 is "higher" than 250. Koto keeps the counter from before the restart (`Kept.before`) and, while it is kept,
reads a higher counter at or below it only when the plug can have counted that far since it was last read: the
restart limit's bound, 100 + 2 x rate x the time not heard. BLE loses adverts, so steps of hundreds after a minute out
of earshot are the plug's own, and read.

Adverts are encrypted as the plug encrypts them (`build_service_data`) and decoded by bthome-ble; the source runs on a
`ReplayBackend` whose `ManualClock` moves with the adverts. The same across a gateway restart, on a real ledger:
tests/gateway/test_bthome_restart.py.
"""

from __future__ import annotations

import logging

import pytest

from drivers.ble import BTHomeSource, key_id
from drivers.bthome import BTHOME_UUID, BTHomeDecoder, CounterBeforeRestart, CounterPace, Kept, build_service_data
from gateway.bthome_counters import CHECKPOINT, EncryptionCounters
from koto.clock import ManualClock
from tests.drivers.test_bthome_replay import hear as hear_replayed

PLUG = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
BOOT = "00000000-0000-4000-8000-00000000aaaa"
LATER_BOOT = "00000000-0000-4000-8000-00000000bbbb"
S = 1_000_000_000  # ns


def sd(counter: int, *, watts: int = 5) -> dict[str, bytes]:
    return {BTHOME_UUID: build_service_data(packet_id=counter % 256, power_mw=watts * 1000, bindkey=KEY, mac=PLUG,
                                            counter=counter)}


def heard_then_restarted() -> CounterPace:
    """The plug heard at 5 a second for 40 s (80_000 to 80_199), then not heard for 100 s, in which it restarted its
    count: read at 250 (below 100 + 2 x 5 x 100)."""
    pace = CounterPace(None, BOOT)
    for i in range(200):
        pace.read(80_000 + i, 1000 * S + i * S // 5)
    assert pace.restart_below(1140 * S) > 250
    pace.read(250, 1140 * S)
    return pace


# ---------------------------------------------------------------------------------------------------------------
# What is kept, and the counters it refuses


def test_a_restart_of_the_count_keeps_the_counter_from_before_it() -> None:
    pace = heard_then_restarted()
    assert pace.kept == Kept(250, 5.0, "0000aaaa", 1140 * S, before=80_199)
    # 1 s on: the plug can be at most 100 + 2 x 5 x 1 past 250; anything from there up to 80_199 is from before
    assert pace.recorded(1141 * S) == (250 + 110, 80_199)
    # 60 s out of earshot: at most 100 + 600 past it
    assert pace.recorded(1200 * S) == (250 + 700, 80_199)


def test_before_is_dropped_once_a_counter_above_it_is_read() -> None:
    pace = heard_then_restarted()
    pace.read(80_200, 1141 * S)  # (how: a step up; the pace's part is only what it keeps)
    assert pace.kept is not None and pace.kept.before is None
    assert pace.recorded(1142 * S) is None


def test_before_is_kept_however_long_until_the_plug_counts_past_it() -> None:
    """Not dropped by time: after 8,000 s at its pace the plug is at 40_250, half-way to 80_199, and an advert
    recorded before its restart between the two is still refused. (Dropping it once 100 + 2 x rate x the time since
    the restart passed 80_199 would read those again, and would free no device sooner: a plug whose own adverts are
    refused counts faster than twice its learned rate, and so passes 80_199 before that time comes.)"""
    pace = heard_then_restarted()
    t = 1140 * S
    for _ in range(8000):
        t += S
        pace.read(pace.kept.counter + 5 if pace.kept else 0, t)
    assert pace.kept is not None and pace.kept.counter == 40_250 and pace.kept.before == 80_199
    assert pace.recorded(t + 100 * S) == (40_250 + 100 + 1000, 80_199)
    pace.read(80_200, t + 1000 * S)
    assert pace.kept.before is None


def test_a_second_restart_keeps_the_highest_counter_from_before_either() -> None:
    pace = heard_then_restarted()
    pace.read(400, 1170 * S)
    pace.read(30, 1175 * S)  # restarted again (below 100)
    assert pace.kept is not None and pace.kept.before == 80_199


def test_no_bound_without_a_rate_or_across_a_reboot() -> None:
    """No rate learned: how far the plug can have counted is not known, so a higher counter is read, as before.
    Last read in an earlier boot: the Pi may have been off for hours while the plug counted on, so the first advert
    after the reboot is not held to the uptime; the ones after it are, from it."""
    no_rate = CounterPace(Kept(250, None, "0000aaaa", 1140 * S, before=80_199), BOOT)
    assert no_rate.recorded(1141 * S) is None
    kept = Kept(250, 5.0, "0000aaaa", 1140 * S, before=80_199)
    rebooted = CounterPace(kept, LATER_BOOT)
    assert rebooted.recorded(60 * S) is None
    rebooted.read(30_250, 60 * S)  # the plug counted on for 100 min while the Pi was off
    assert rebooted.kept is not None and rebooted.kept.before == 80_199
    assert rebooted.recorded(61 * S) == (30_250 + 110, 80_199)


def test_the_decoder_refuses_a_higher_counter_in_the_recorded_range_before_decrypting() -> None:
    dec = BTHomeDecoder(PLUG, KEY, last_counter=250)
    with pytest.raises(CounterBeforeRestart) as e:
        dec.decode(sd(80_100), t_s=1.0, recorded=(360, 80_199))
    assert (e.value.kind, e.value.counter, e.value.last, e.value.reach, e.value.before) == (
        "replayed_counter", 80_100, 250, 360, 80_199)
    assert dec.last_counter == 250
    assert dec.decode(sd(359), t_s=2.0, recorded=(360, 80_199)) is not None  # the plug's own
    assert dec.decode(sd(80_200), t_s=10.0, recorded=(460, 80_199)) is not None  # above anything recorded before


# ---------------------------------------------------------------------------------------------------------------
# The source: the replay refused and counted, the plug's own adverts read


async def hear(counters: EncryptionCounters, clock: ManualClock, adverts: list[tuple[int, float]]) -> BTHomeSource:
    """One source on `counters` hears adverts with these (counter, seconds into the replay), every one of them."""
    src = await hear_replayed(counters, clock, adverts)
    assert src.adverts == len(adverts)
    return src


async def test_an_advert_recorded_before_the_restart_is_refused_and_the_plugs_own_are_read(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    counters = EncryptionCounters()
    plug = [(80_000 + i, 0.2 * i) for i in range(200)]  # 5 a second for 40 s: the rate learned
    plug += [(250, 140.0), (251, 140.2)]  # out of earshot 100 s, and restarted meanwhile: read as a restart
    plug += [(80_100, 141.0)]  # recorded by someone before the restart, played back
    plug += [(252, 141.4), (253, 141.6)]  # the plug's own
    plug += [(253 + 300, 201.6)]  # a minute of its adverts lost (BLE): 300 steps in 60 s, within 100 + 2 x 5 x 60
    plug += [(80_150, 202.0), (560, 203.0)]  # another, and the plug again
    src = await hear(counters, ManualClock(mono_ns=1000 * S, boot_id=BOOT), plug)
    assert src.health.errors == {"replayed_counter": 2} and src.duplicates == 0
    assert src._queue.qsize() == 2 * (len(plug) - 2)  # power and RSSI of every advert but the two replays
    kept = counters.kept(PLUG, key_id(KEY))
    assert kept is not None and (kept.counter, kept.before) == (560, 80_199)
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert said == [  # once a minute per kind: the first only
        "plug: advert from A4:C1:38:8D:18:B2 ignored: its encryption counter 80100 is 79849 above the last one read "
        "from it, 251, further than the device can have counted since (below 359), and not above 80199, where its "
        "count was before it restarted: an advert recorded before the device restarted its count, played again. If "
        "it was the device's own (reset again while Koto did not hear it, or counting faster than it was seen to), "
        "it is read again by itself, at the latest once its counter passes 80199; to read it at once, run `sudo "
        "systemctl stop koto; sudo -u koto koto bthome forget-counter plug; sudo systemctl start koto`"]


async def test_a_plug_restarted_while_not_heard_is_read_by_the_same_source_above_100() -> None:
    """bthome-ble keeps a counter of its own in the running source; a restart Koto reads at 250 (above bthome-ble's
    100) must not be refused by it after Koto has read it."""
    counters = EncryptionCounters()
    plug = [(80_000 + i, 0.2 * i) for i in range(200)] + [(250, 140.0), (251, 140.2), (252, 140.4)]
    src = await hear(counters, ManualClock(mono_ns=1000 * S, boot_id=BOOT), plug)
    assert src.health.errors == {} and counters.last(PLUG, key_id(KEY)) == 252


async def test_without_a_learned_rate_a_higher_counter_is_read_as_before() -> None:
    """Only 10 s heard (no rate: 30 s of adverts are needed), then the plug counts again from 3: how far it can have
    counted is not known, so an advert from before the restart is read, as bthome-ble reads it."""
    counters = EncryptionCounters()
    src = await hear(counters, ManualClock(mono_ns=1000 * S, boot_id=BOOT),
                     [(80_000 + i, 0.2 * i) for i in range(50)] + [(3, 20.0), (80_010, 21.0)])
    assert src.health.errors == {}
    kept = counters.kept(PLUG, key_id(KEY))
    assert kept is not None and (kept.counter, kept.rate, kept.before) == (80_010, None, 80_049)


# ---------------------------------------------------------------------------------------------------------------
# The checkpoint row


def test_the_row_keeps_before_and_an_old_row_without_it_loads() -> None:
    counters = EncryptionCounters()
    counters.keep(PLUG, "k1", Kept(250, 5.0, "0000aaaa", 1140 * S + 1, before=80_199))
    row = counters.checkpoints()[CHECKPOINT]
    assert row == {"devices": {PLUG: {"counter": 250, "key": "k1", "rate": 5.0, "boot": "0000aaaa",
                                      "mono_ms": 1_140_000, "before": 80_199}}}
    assert EncryptionCounters(row).kept(PLUG, "k1") == Kept(250, 5.0, "0000aaaa", 1140 * S, 80_199)
    old = {"devices": {PLUG: {"counter": 250, "key": "k1", "rate": 5.0, "boot": "0000aaaa", "mono_ms": 1_140_000}}}
    assert EncryptionCounters(old).kept(PLUG, "k1") == Kept(250, 5.0, "0000aaaa", 1140 * S)
    damaged = {"devices": {PLUG: {"counter": 250, "key": "k1", "before": 100}}}
    assert EncryptionCounters(damaged).kept(PLUG, "k1") == Kept(250)  # a before below the counter costs only itself
    no_boot = {"devices": {PLUG: {"counter": 250, "key": "k1", "before": 80_199}}}
    assert EncryptionCounters(no_boot).kept(PLUG, "k1") == Kept(250, before=80_199)
    forgotten = EncryptionCounters(row)
    assert forgotten.forget(PLUG) == 250 and forgotten.kept(PLUG, "k1") is None and forgotten.checkpoints() == {}
