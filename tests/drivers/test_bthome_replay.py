"""The encryption counter of a BTHome device across restarts: a decoder resumes from the last counter read, and a
source keeps it in the store the gateway gives it (`counters=`, gateway/bthome_counters.py), so a new source on the
same store (a source restarted by the supervisor, or the gateway restarted with the store read back from its ledger:
tests/gateway/test_bthome_restart.py) refuses what the old one would have refused.

Adverts are encrypted as a device encrypts them (`build_service_data`, which reproduces bthome-ble's published
encrypted vector byte for byte) and decoded by bthome-ble.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from drivers.ble import BTHomeSource, key_id
from drivers.ble_backend import ReplayAdvert, ReplayBackend
from drivers.bthome import (
    BTHOME_UUID,
    RATE_MAX,
    RESTART_BELOW,
    BTHomeDecoder,
    CounterBelow,
    CounterPace,
    Kept,
    build_service_data,
)
from drivers.errors import FrameError
from gateway.bthome_counters import CHECKPOINT, EncryptionCounters
from koto.clock import ManualClock

PLUG = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
NEW_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def sd(counter: int, *, watts: int = 5, key: bytes = KEY) -> dict[str, bytes]:
    return {BTHOME_UUID: build_service_data(packet_id=counter % 256, power_mw=watts * 1000, bindkey=key, mac=PLUG,
                                            counter=counter)}


def decoder(last_counter: int | None) -> BTHomeDecoder:
    return BTHomeDecoder(PLUG, KEY, last_counter=last_counter)


# ---------------------------------------------------------------------------------------------------------------
# The decoder, resumed from the counter read before a restart


def test_a_resumed_decoder_refuses_an_older_counter_and_reads_a_newer_one() -> None:
    dec = decoder(1002)
    with pytest.raises(CounterBelow) as e:
        dec.decode(sd(1001), t_s=10.0)
    assert (e.value.kind, e.value.counter, e.value.last) == ("replayed_counter", 1001, 1002)
    got = dec.decode(sd(1003, watts=7), t_s=20.0)
    assert got is not None and got.sensors["power"] == 7 and dec.last_counter == 1003


def test_the_advert_read_last_before_the_restart_is_a_repeat_whatever_it_carries() -> None:
    dec = decoder(1002)
    assert dec.decode(sd(1002), t_s=10.0) is None
    assert dec.decode(sd(1002, watts=900), t_s=20.0) is None  # it was read once; nothing under it is read again
    assert dec.last_counter == 1002


def test_a_counter_below_100_after_a_higher_one_is_the_device_counting_again_from_0() -> None:
    """bthome-ble's rule (`_check_encryption_counter`), kept: a lower counter below 100 is a device restart."""
    dec = decoder(5000)
    got = dec.decode(sd(RESTART_BELOW - 1), t_s=10.0)
    assert got is not None and dec.last_counter == RESTART_BELOW - 1
    assert dec.decode(sd(150), t_s=20.0) is not None  # and it counts on from there


def test_a_device_reset_heard_only_past_its_first_100_adverts_is_refused() -> None:
    with pytest.raises(CounterBelow):
        decoder(5000).decode(sd(RESTART_BELOW), t_s=10.0)


def test_an_advert_that_does_not_authenticate_moves_no_counter() -> None:
    dec = decoder(1002)
    with pytest.raises(FrameError) as e:
        dec.decode(sd(9999, key=NEW_KEY), t_s=10.0)
    assert e.value.kind == "bad_mic" and dec.last_counter == 1002


def test_a_fresh_decoder_reads_any_first_counter_as_bthome_ble_does() -> None:
    assert decoder(None).decode(sd(1001), t_s=10.0) is not None


# ---------------------------------------------------------------------------------------------------------------
# The source and its store


async def play(counters: EncryptionCounters, *counts: int, key: bytes = KEY) -> BTHomeSource:
    """A new source on `counters` hears adverts with these counters, 5 s apart."""
    clock = ManualClock()
    backend = ReplayBackend([ReplayAdvert(PLUG, sd(c, key=key)[BTHOME_UUID], t_s=5.0 * (i + 1))
                             for i, c in enumerate(counts)], clock=clock)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, bindkey=key,
                            counters=counters) as src:
        async with asyncio.timeout(10):
            await backend.replay.idle.wait()
    assert src.adverts == len(counts)
    return src


async def test_a_source_keeps_each_counter_it_reads_and_a_new_source_on_the_store_resumes_from_it() -> None:
    counters = EncryptionCounters()
    first = await play(counters, 1000, 1001, 1002)
    assert first.health.errors == {} and counters.last(PLUG, key_id(KEY)) == 1002
    again = await play(counters, 1001, 1002, 1003)  # e.g. the source restarted by the supervisor
    assert (again.health.errors, again.duplicates) == ({"replayed_counter": 1}, 1)
    assert counters.last(PLUG, key_id(KEY)) == 1003


async def test_a_refused_advert_leaves_the_kept_counter_as_it_was() -> None:
    counters = EncryptionCounters()
    counters.accepted(PLUG, key_id(KEY), 5000)
    src = await play(counters, 1000)
    assert src.health.errors == {"replayed_counter": 1} and counters.last(PLUG, key_id(KEY)) == 5000


async def test_a_counter_kept_under_another_bindkey_does_not_apply() -> None:
    """A device re-flashed with a new bindkey starts a new count under a new key: an advert recorded under the old
    key does not authenticate under the new one, so the old counter protects nothing and is not held against it."""
    counters = EncryptionCounters()
    counters.accepted(PLUG, key_id(KEY), 5000)
    src = await play(counters, 300, 301, key=NEW_KEY)
    assert src.health.errors == {}
    assert counters.last(PLUG, key_id(NEW_KEY)) == 301 and counters.last(PLUG, key_id(KEY)) is None


async def test_a_plain_device_keeps_nothing() -> None:
    counters = EncryptionCounters()
    clock = ManualClock()
    plain = build_service_data(packet_id=1, power_mw=5_000)
    async with BTHomeSource("plug", clock=clock, address=PLUG, counters=counters,
                            backend=ReplayBackend([ReplayAdvert(PLUG, plain, t_s=1.0)], clock=clock)) as src:
        async with asyncio.timeout(10):
            await anext(aiter(src))
    assert len(counters) == 0 and counters.checkpoints() == {}


def test_the_key_id_names_a_key_without_giving_it_away() -> None:
    assert key_id(KEY) == key_id(bytes(KEY)) != key_id(NEW_KEY)
    assert len(key_id(KEY)) == 16 and KEY.hex()[:8] not in key_id(KEY)


# ---------------------------------------------------------------------------------------------------------------
# The store's checkpoint (what the ledger holds)


def test_the_store_reads_back_what_it_wrote() -> None:
    counters = EncryptionCounters()
    counters.accepted(PLUG.lower(), "k1", 1002)
    cp = counters.checkpoints()
    assert cp == {CHECKPOINT: {"devices": {PLUG: {"counter": 1002, "key": "k1"}}}}
    again = EncryptionCounters(cp[CHECKPOINT])
    assert again.last(PLUG, "k1") == 1002 and again.last(PLUG, "k2") is None
    assert again.forget(PLUG) == 1002 and again.forget(PLUG) is None


def test_the_store_keeps_the_rate_and_when_and_reads_back_a_row_written_before_it_kept_them() -> None:
    counters = EncryptionCounters()
    counters.keep(PLUG, "k1", Kept(1002, rate=5.25, boot="0000aaaa", mono_ns=86_700_123_456_789))
    cp = counters.checkpoints()[CHECKPOINT]
    assert cp == {"devices": {PLUG: {"counter": 1002, "key": "k1", "rate": 5.25, "boot": "0000aaaa",
                                     "mono_ms": 86_700_123}}}
    assert EncryptionCounters(cp).kept(PLUG, "k1") == Kept(1002, 5.25, "0000aaaa", 86_700_123_000_000)
    old = EncryptionCounters({"devices": {PLUG: {"counter": 1002, "key": "k1"}}})
    assert old.kept(PLUG, "k1") == Kept(1002) and old.checkpoints()[CHECKPOINT] == {
        "devices": {PLUG: {"counter": 1002, "key": "k1"}}}
    damaged = EncryptionCounters({"devices": {PLUG: {"counter": 1002, "key": "k1", "rate": float("inf"),
                                                     "boot": "0000aaaa", "mono_ms": -5}}})
    assert damaged.kept(PLUG, "k1") == Kept(1002)  # an unreadable rate or time costs only themselves


def test_a_damaged_row_costs_only_its_own_device_its_counter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    counters = EncryptionCounters({"devices": {PLUG: {"counter": "1002", "key": "k1"},
                                               "A4:C1:38:00:00:01": {"counter": 7, "key": "k1"}}})
    assert counters.last(PLUG, "k1") is None and counters.last("A4:C1:38:00:00:01", "k1") == 7
    assert "the kept counter of A4:C1:38:8D:18:B2 is unreadable" in caplog.text
    assert len(EncryptionCounters({"devices": "garbage"})) == 0


# ---------------------------------------------------------------------------------------------------------------
# A device that restarted its count while it was not heard: how far it can have counted since


BOOT = "00000000-0000-4000-8000-00000000aaaa"
LATER_BOOT = "00000000-0000-4000-8000-00000000bbbb"
S = 1_000_000_000  # ns


def test_the_rate_is_the_fastest_counting_measured_over_30_s_not_a_burst_of_two_adverts() -> None:
    pace = CounterPace(None, BOOT)
    pace.read(1000, 100 * S)
    pace.read(1001, 100 * S + 10_000_000)  # BlueZ hands over two adverts 10 ms apart: no 100 a second from that
    assert pace.kept is not None and pace.kept.rate is None
    for i in range(2, 151):  # 0.2 s apart: 5 a second over 30 s
        pace.read(1000 + i, 100 * S + i * S // 5)
    assert pace.kept.rate == 5.0 and (pace.kept.boot, pace.kept.mono_ns) == ("0000aaaa", 130 * S)
    pace.read(1160, 190 * S)  # slower now (out of earshot for a while): the fastest rate stays
    assert pace.kept.rate == 5.0 and pace.kept.counter == 1160
    pace.read(3, 200 * S)  # the device counting again from low: a new measure starts there
    pace.read(3 + 40 * 10, 240 * S)
    assert pace.kept.rate == 10.0


def test_a_step_up_further_than_the_device_can_have_counted_teaches_no_rate() -> None:
    """After the device restarted its count (at 300 now), an advert recorded before (at 79_000) is higher, and so
    read (bthome-ble's rule: the counter carries no epoch); it must not make the device seem to count 2,600 a
    second, which would widen the limit for good."""
    pace = CounterPace(None, BOOT)
    for i in range(151):
        pace.read(1000 + i, i * S // 5)
    pace.read(300, 40 * S)
    pace.read(301, 40 * S + S // 5)
    pace.read(79_000, 70 * S)  # 30 s on: measured, it would be (79_000 - 300) / 30
    pace.read(79_005, 101 * S)
    assert pace.kept is not None and pace.kept.rate == 5.0


def test_a_rate_is_at_most_what_ble_can_send() -> None:
    pace = CounterPace(None, BOOT)
    pace.read(0, 0)
    assert pace.read(1_000_000, 30 * S).rate == RATE_MAX


def test_a_lower_counter_is_a_restart_when_below_what_the_device_can_have_counted_since_it_was_read() -> None:
    kept = Kept(80_000, rate=5.0, boot="0000aaaa", mono_ns=1000 * S)
    same_boot = CounterPace(kept, BOOT)
    assert same_boot.restart_below(1000 * S) == RESTART_BELOW  # heard just now: bthome-ble's rule
    assert same_boot.restart_below(1060 * S) == RESTART_BELOW + 5 * 60 * 2  # 60 s unheard, twice the rate
    assert same_boot.restart_below(900 * S) == RESTART_BELOW  # (a clock before it: nothing more)
    later = CounterPace(kept, LATER_BOOT)  # read in an earlier boot: only this boot's uptime is sure to have passed
    assert later.unheard_s(55 * S) == 55.0 and later.restart_below(55 * S) == RESTART_BELOW + 550
    assert CounterPace(Kept(80_000), LATER_BOOT).restart_below(55 * S) == RESTART_BELOW  # a row without a rate
    assert CounterPace(Kept(80_000, rate=5.0), BOOT).restart_below(55 * S) == RESTART_BELOW  # nor a time


def test_the_decoder_reads_a_lower_counter_below_the_limit_it_is_given_and_refuses_one_above_it() -> None:
    dec = decoder(80_000)
    with pytest.raises(CounterBelow):
        dec.decode(sd(700), t_s=10.0, restart_below=650)
    got = dec.decode(sd(300), t_s=10.0, restart_below=650)
    assert got is not None and dec.last_counter == 300
    assert decoder(80_000).decode(sd(50), t_s=10.0, restart_below=0) is not None  # never less than bthome-ble's


async def hear(counters: EncryptionCounters, clock: ManualClock, adverts: list[tuple[int, float]]) -> BTHomeSource:
    """A new source on `counters` hears adverts with these (counter, seconds into the replay)."""
    backend = ReplayBackend([ReplayAdvert(PLUG, sd(c)[BTHOME_UUID], t_s=t) for c, t in adverts], clock=clock)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, bindkey=KEY, counters=counters,
                            queue_size=1000) as src:
        async with asyncio.timeout(10):
            await backend.replay.idle.wait()
    return src


async def test_a_device_restarted_while_not_heard_is_read_and_a_replay_from_further_back_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    counters, clock = EncryptionCounters(), ManualClock(mono_ns=1000 * S, boot_id=BOOT)
    src = await hear(counters, clock, [(80_000 + i, 0.2 * i) for i in range(200)])  # 5 a second for 40 s
    kept = counters.kept(PLUG, key_id(KEY))
    assert src.health.errors == {} and kept is not None and kept.rate == 5.0
    # Out of earshot for 100 s, reset meanwhile: 250 is within 100 + 2 x 5 x 100; 79_000, recorded earlier, is not.
    src = await hear(counters, clock, [(79_000, 100.0), (250, 100.1), (251, 100.3)])
    assert src.health.errors == {"replayed_counter": 1} and counters.last(PLUG, key_id(KEY)) == 251
    assert "counts its encryption counter again: 250, below the 80199 read from it at least 100 s ago" in caplog.text


async def test_a_reset_the_limit_does_not_cover_yet_is_read_once_the_limit_has_grown_past_it() -> None:
    """The Pi was off, and the plug was reset 100 s before the Pi came back: the Pi can account only for its own
    uptime. Refused adverts do not move the time the kept counter was read, so the limit grows twice as fast as the
    plug counts, and passes its counter after about 80 s of uptime: the plug is read again by itself."""
    counters = EncryptionCounters()
    await hear(counters, ManualClock(mono_ns=1000 * S, boot_id=BOOT), [(80_000 + i, 0.2 * i) for i in range(200)])
    up_10_s = ManualClock(mono_ns=10 * S, boot_id=LATER_BOOT)
    src = await hear(counters, up_10_s, [(5 * (100 + 10 + t), float(t)) for t in range(0, 100, 10)])
    assert src.health.errors == {"replayed_counter": 8}  # up 10, 20 ... 80 s: 550 >= 200 ... 900 >= 900
    assert counters.last(PLUG, key_id(KEY)) == 1000  # up 90 s: 950 < 1000 read; up 100 s: 1000 read
