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
from drivers.bthome import BTHOME_UUID, RESTART_BELOW, BTHomeDecoder, CounterBelow, build_service_data
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


def test_a_damaged_row_costs_only_its_own_device_its_counter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    counters = EncryptionCounters({"devices": {PLUG: {"counter": "1002", "key": "k1"},
                                               "A4:C1:38:00:00:01": {"counter": 7, "key": "k1"}}})
    assert counters.last(PLUG, "k1") is None and counters.last("A4:C1:38:00:00:01", "k1") == 7
    assert "the kept counter of A4:C1:38:8D:18:B2 is unreadable" in caplog.text
    assert len(EncryptionCounters({"devices": "garbage"})) == 0
