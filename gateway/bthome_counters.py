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
becomes the new last counter. One reset while Koto did not hear its first 100 adverts is refused until its counter
passes the kept one; `koto bthome forget-counter SOURCE` (the gateway stopped) forgets it. A device given a new
bindkey starts afresh by itself: a counter is kept with the id of the key it was read under.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from metering.ledger import Ledger

log = logging.getLogger("koto.gateway")

CHECKPOINT = "bthome:counters"  # the ledger checkpoint row that holds them


class _Checkpoints(Protocol):
    """What this module needs of metering.ledger.Ledger."""

    def checkpoint(self, name: str) -> dict[str, Any] | None: ...


class EncryptionCounters:
    """Address -> (the last encryption counter read, the id of the bindkey it was read under). In RAM; the daemon
    writes `checkpoints()` with its batches."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self._devices: dict[str, tuple[int, str]] = {}
        devices = (state or {}).get("devices")
        for address, kept in (devices.items() if isinstance(devices, Mapping) else ()):
            counter, key = (kept.get("counter"), kept.get("key")) if isinstance(kept, Mapping) else (None, None)
            if type(counter) is int and 0 <= counter < 1 << 32 and isinstance(key, str):
                self._devices[str(address).upper()] = (counter, key)
            else:  # written by us, so only a damaged row: start afresh for that device rather than not at all
                log.warning("bthome counters: the kept counter of %s is unreadable (%r); starting afresh", address,
                            kept)

    @classmethod
    def load(cls, ledger: _Checkpoints) -> EncryptionCounters:
        return cls(ledger.checkpoint(CHECKPOINT))

    def last(self, address: str, key_id: str) -> int | None:
        kept = self._devices.get(address.upper())
        return kept[0] if kept is not None and kept[1] == key_id else None

    def accepted(self, address: str, key_id: str, counter: int) -> None:
        self._devices[address.upper()] = (counter, key_id)

    def forget(self, address: str) -> int | None:
        """Forget `address`'s counter; returns it (None when none was kept)."""
        kept = self._devices.pop(address.upper(), None)
        return None if kept is None else kept[0]

    def __len__(self) -> int:
        return len(self._devices)

    def snapshot(self) -> dict[str, Any]:
        return {"devices": {a: {"counter": c, "key": k} for a, (c, k) in sorted(self._devices.items())}}

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
