"""The last encryption counter read from each encrypted BTHome device, kept across restarts of the gateway.

An encrypted BTHome v2 advert carries a 32-bit counter (the last part of its AES-CCM nonce) that the device raises
with every new advert. A receiver refuses one whose counter did not increase, or anyone who recorded an advert could
play it back later (drivers/bthome.py). That memory must outlive the process: otherwise an advert recorded earlier
and played back right after a restart is read once more (a false reading, a false register dip in the journal).

`EncryptionCounters` is that memory, owned by the gateway and handed to every BTHome source (`counters=`, the
`drivers.ble.CounterStore` they ask for). The sources update it in RAM on every advert they read. On disk it is one
row of the ledger's checkpoint table, `bthome:counters`, written **only with the batches the daemon writes anyway**
(`Gateway._checkpoints`) and with the last batch of a clean stop. The ledger skips a checkpoint equal to the one it
holds, so it costs no transaction of its own and, when a counter moved, one more 1 KiB page in a transaction that
is written anyway. What remains open: after a crash or a power cut the gateway resumes from the counter of the last
batch, so an advert sent after that batch and before the crash could be played back once, until the device's own
next advert (whose counter is higher) closes it again. A clean stop (`systemctl restart koto`, an upgrade, a
reboot) leaves no such window.

A device that was reset counts again from 0: a counter below 100 is read as such a restart (bthome-ble's rule) and
becomes the new last counter. So is a higher one that the device can have reached since Koto last read it: with each
counter the row keeps the fastest the device was seen counting (`rate`, steps a second) and when the counter was
read (`boot`, the boot's tag, and `mono_ms`, that boot's monotonic clock), from which `drivers.bthome.CounterPace`
works out the limit; a plug restarted by the power cut that also restarted the Pi is read at once. A row written
before these were kept loads (bthome-ble's rule alone applies until the rate is learned, 30 s of adverts). After a
restart of the count the row also keeps the counter the device had before it (`before`), so that an advert recorded
before the restart, higher than the new count, is still refused after a gateway restart; a row without it loads
(nothing from before a restart is then known). A reset further back than that is refused until its counter passes
the kept one, or until the limit, which grows while the device is not read, reaches it; `koto bthome forget-counter
SOURCE` (the gateway stopped) forgets the counter. A device given a new bindkey starts afresh by itself: a counter
is kept with the id of the key it was read under.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from drivers.bthome import RATE_MAX, Kept

if TYPE_CHECKING:
    from metering.ledger import Ledger

log = logging.getLogger("koto.gateway")

CHECKPOINT = "bthome:counters"  # the ledger checkpoint row that holds them


class _Checkpoints(Protocol):
    """What this module needs of metering.ledger.Ledger."""

    def checkpoint(self, name: str) -> dict[str, Any] | None: ...


def _kept(kept: Any) -> Kept | None:
    """A device's entry as written by `snapshot` (the rate and time optional: rows written before they were kept
    have neither, nor `before`); None when it is unreadable. An unreadable rate, time or `before` costs only
    themselves."""
    if not isinstance(kept, Mapping):
        return None
    counter: Any = kept.get("counter")
    rate: Any = kept.get("rate")
    boot: Any = kept.get("boot")
    mono_ms: Any = kept.get("mono_ms")
    if type(counter) is not int or not 0 <= counter < 1 << 32 or not isinstance(kept.get("key"), str):
        return None
    if not (type(rate) in (int, float) and math.isfinite(rate) and 0 < rate <= RATE_MAX):
        rate = None
    before: Any = kept.get("before")
    if not (type(before) is int and counter <= before < 1 << 32):
        before = None
    if not (isinstance(boot, str) and type(mono_ms) is int and mono_ms >= 0):
        return Kept(counter, rate, before=before)
    return Kept(counter, rate, boot, mono_ms * 1_000_000, before)


class EncryptionCounters:
    """Address -> (what is kept of its counter, the id of the bindkey it was read under). In RAM; the daemon writes
    `checkpoints()` with its batches. A `drivers.ble.CounterStore`."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self._devices: dict[str, tuple[Kept, str]] = {}
        devices = (state or {}).get("devices")
        for address, entry in (devices.items() if isinstance(devices, Mapping) else ()):
            kept = _kept(entry)
            if kept is not None:
                self._devices[str(address).upper()] = (kept, entry["key"])
            else:  # written by us, so only a damaged row: start afresh for that device rather than not at all
                log.warning("bthome counters: the kept counter of %s is unreadable (%r); starting afresh", address,
                            entry)

    @classmethod
    def load(cls, ledger: _Checkpoints) -> EncryptionCounters:
        return cls(ledger.checkpoint(CHECKPOINT))

    def kept(self, address: str, key_id: str) -> Kept | None:
        entry = self._devices.get(address.upper())
        return entry[0] if entry is not None and entry[1] == key_id else None

    def keep(self, address: str, key_id: str, kept: Kept) -> None:
        self._devices[address.upper()] = (kept, key_id)

    def last(self, address: str, key_id: str) -> int | None:
        """The last counter read from `address` under `key_id` (None: none kept)."""
        kept = self.kept(address, key_id)
        return None if kept is None else kept.counter

    def accepted(self, address: str, key_id: str, counter: int) -> None:
        """Keep `counter` alone (no rate, no time: what a row written before they were kept gives)."""
        self.keep(address, key_id, Kept(counter))

    def forget(self, address: str) -> int | None:
        """Forget `address`'s counter; returns it (None when none was kept)."""
        entry = self._devices.pop(address.upper(), None)
        return None if entry is None else entry[0].counter

    def __len__(self) -> int:
        return len(self._devices)

    def snapshot(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for address, (kept, key) in sorted(self._devices.items()):
            entry: dict[str, Any] = {"counter": kept.counter, "key": key}
            if kept.rate is not None:
                entry["rate"] = kept.rate
            if kept.boot is not None and kept.mono_ns is not None:
                entry["boot"], entry["mono_ms"] = kept.boot, kept.mono_ns // 1_000_000
            if kept.before is not None:
                entry["before"] = kept.before
            devices[address] = entry
        return {"devices": devices}

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        """The checkpoint row to write with a batch; none while no counter is kept (a gateway without encrypted
        BTHome devices never gets the row)."""
        return {CHECKPOINT: self.snapshot()} if self._devices else {}


def forget_counter(ledger: Ledger, address: str) -> int | None:
    """Forget the counter kept for `address` in a ledger opened for writing (the gateway stopped: it writes its own
    at a clean stop); returns the counter forgotten, None when none was kept (and then nothing is written)."""
    counters = EncryptionCounters.load(ledger)
    forgotten = counters.forget(address)
    if forgotten is not None:
        ledger.append([], checkpoints={CHECKPOINT: counters.snapshot()})
    return forgotten
