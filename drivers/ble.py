"""BTHome v2 plugs and sensors over BLE: adverts in, power / energy / voltage / current / on-off readings out.

    [appliance.sources.ac-plug]
    driver = "bthome"
    address = "A4:C1:38:8D:18:B2"
    bindkey = "231d39c1d7cc1ab1aee224cd096db932"   # only for encrypted devices
    stale_after_s = 300

One source is one device. All BTHome sources on an adapter share one supervised scanner (`ble_backend`), passed
in as `ble=` (the gateway builds one per adapter) or made by the source when none is given. The detection callback
`_on_advert(device, advertisement_data)` is the same in production, in the demo (replay) and in the tests.

Per advert: not ours -> ignored; a repeat (same bytes or same packet id, which BlueZ produces whenever a property
such as RSSI changes) -> counted as a duplicate, no reading; bad input (wrong length, unknown object id, bad MIC,
no BTHome data...) -> counted by kind in `health.errors`, logged at most once a minute per kind, no reading;
otherwise one reading per quantity, converted once with `to_milli`. A device silent for `stale_after_s` turns the
source's health to "degraded" with one log line; nothing is invented while it is silent.

An encrypted device's last encryption counter is kept in a `CounterStore` the gateway passes in (`counters=`): the
source resumes from it when it opens, so an advert recorded earlier and played back after a restart is refused as
it would have been before. With the counter the store keeps how fast the device counts and when it was last read
(`drivers.bthome.Kept`), so that a device whose count restarted while Koto did not hear it (a power cut that took
the device and the Pi together) is read at once when its counter is no higher than it can have counted since
(`drivers.bthome.CounterPace`), and a recorded advert further back is still refused. After such a restart the
counter the device had before it is kept too, and an advert recorded before the restart (higher than the device's new
count) is refused when the device cannot have counted that far since it was last read. The source only reads and
updates the store in memory; when it is written to disk is the gateway's business (gateway/bthome_counters.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, Self

from koto.clock import Clock, Now
from koto.reading import Quantity, Reading, to_milli

from .base import Claim, Source
from .ble_backend import BleakBackend, Subscription
from .bthome import RESTART_BELOW, BTHomeDecoder, CounterBeforeRestart, CounterBelow, CounterPace, Decoded, Kept
from .errors import FrameError, SourceProblems

log = logging.getLogger("koto.drivers.bthome")

# bthome-ble sensor key -> (quantity, multiplier from its native unit to our milli-unit)
SENSOR_QUANTITIES: dict[str, tuple[Quantity, int]] = {
    "power": (Quantity.POWER_MW, 1000),  # W -> mW
    "energy": (Quantity.ENERGY_MWH, 1_000_000),  # kWh -> mWh
    "voltage": (Quantity.VOLTAGE_MV, 1000),  # V -> mV
    "current": (Quantity.CURRENT_MA, 1000),  # A -> mA
}
# bthome-ble binary sensor key -> our signal name
BINARY_SIGNALS: dict[str, str] = {"power": "power"}

_MAC = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_KEYS = ("driver", "address", "bindkey", "stale_after_s", "adapter", "scanning", "restart_after_s")


class CounterStore(Protocol):
    """Where BTHome sources keep the last encryption counter they read from each encrypted device (with how fast it
    counts and when it was read: `Kept`), by address and key id (`key_id`), so that a restart of the source or of
    the gateway does not forget it."""

    def kept(self, address: str, key_id: str) -> Kept | None:
        """What is kept of `address`'s counter under the key `key_id`; None when nothing is (or only under another
        key: a device given a new bindkey starts afresh)."""
        ...

    def keep(self, address: str, key_id: str, kept: Kept) -> None:
        """`address` sent an advert under `key_id` with the counter `kept.counter`, and it was read (lower than the
        last one when the device restarted its count)."""
        ...


def key_id(bindkey: bytes) -> str:
    """A short name for a bindkey, to tell whether a kept counter was read under the key configured now; the key
    cannot be recovered from it (64 bits of a SHA-256)."""
    return hashlib.sha256(b"koto bthome key id\0" + bindkey).hexdigest()[:16]


def _split_key(key: str) -> tuple[str, str]:
    """bthome-ble names the second of two same-kind objects "power_2"; that suffix becomes our channel."""
    base, sep, suffix = key.rpartition("_")
    if sep and suffix.isdigit():
        return base, suffix
    return key, ""


class BTHomeSource(Source):
    driver = "bthome"
    needs = frozenset({"ble"})

    def __init__(self, name: str, *, clock: Clock, address: str, backend: BleakBackend | None = None,
                 bindkey: bytes | None = None, stale_after_s: float = 300.0, check_interval_s: float = 1.0,
                 queue_size: int = 256, counters: CounterStore | None = None) -> None:
        super().__init__(name, clock=clock)
        self.address = address.upper()
        self.bindkey = bindkey
        self.counters = counters if bindkey is not None else None  # a plain device has no counter to keep
        self._key_id = key_id(bindkey) if bindkey is not None else ""
        self.stale_after_s = stale_after_s
        self.check_interval_s = check_interval_s
        self._owns_backend = backend is None
        self.backend = backend if backend is not None else BleakBackend()
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=queue_size)
        self._decoder: BTHomeDecoder | None = None
        self._pace: CounterPace | None = None
        self._sub: Subscription | None = None
        self._last_heard_ns: int | None = None
        self._since_ns = 0
        self.stale = False
        self.duplicates = 0
        self.adverts = 0

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, ble: BleakBackend | None = None,
                    counters: CounterStore | None = None, **backends: Any) -> Self:
        problems = SourceProblems(name)  # every problem is said, then raised at once before anything is built
        for key in cfg:
            if key not in _KEYS:
                problems.add(key, f"unknown key; allowed: {', '.join(_KEYS)}")
        address = cfg.get("address", "")
        if not isinstance(address, str) or not _MAC.match(address.upper()):
            problems.add("address", "the device's Bluetooth address, like \"A4:C1:38:8D:18:B2\"")
        bindkey: bytes | None = None
        if "bindkey" in cfg:
            raw = cfg["bindkey"]
            try:
                bindkey = bytes.fromhex(raw) if isinstance(raw, str) else b""
            except ValueError:
                bindkey = b""
            if len(bindkey) != 16:
                problems.add("bindkey", "32 hex digits (the device's 16-byte BTHome key)")
        stale = cfg.get("stale_after_s", 300.0)
        if isinstance(stale, bool) or not isinstance(stale, int | float) or stale <= 0:
            problems.add("stale_after_s", "a number of seconds above 0")
        if ble is None:
            scanning = cfg.get("scanning", "auto")
            if scanning not in ("auto", "passive", "active"):
                problems.add("scanning", "one of \"auto\", \"passive\", \"active\"")
            restart = cfg.get("restart_after_s", 120.0)
            if isinstance(restart, bool) or not isinstance(restart, int | float) or restart <= 0:
                problems.add("restart_after_s", "a number of seconds above 0")
            adapter = cfg.get("adapter")
            if adapter is not None and not isinstance(adapter, str):
                problems.add("adapter", "an adapter name like \"hci0\"")
            problems.raise_if_any()
            ble = BleakBackend(adapter=adapter, scanning=scanning, restart_after_s=float(restart))
            src = cls(name, clock=clock, address=address, backend=ble, bindkey=bindkey, stale_after_s=float(stale),
                      counters=counters)
            src._owns_backend = True
            return src
        problems.raise_if_any()
        return cls(name, clock=clock, address=address, backend=ble, bindkey=bindkey, stale_after_s=float(stale),
                   counters=counters)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def claims(self) -> tuple[Claim, ...]:
        return (Claim(f"ble:{self.address}", "address"),)

    async def _open(self) -> None:
        kept = self.counters.kept(self.address, self._key_id) if self.counters is not None else None
        now = self.clock.now()
        self._decoder = BTHomeDecoder(self.address, self.bindkey, last_counter=None if kept is None else kept.counter)
        self._pace = CounterPace(kept, now.boot_id) if self.bindkey is not None else None
        self._since_ns = now.mono_ns
        self._sub = self.backend.subscribe(self._on_advert)

    async def _close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.close()
        if self._owns_backend:
            await self.backend.aclose()

    async def _readings(self) -> AsyncIterator[Reading]:
        while True:
            try:
                async with asyncio.timeout(self.check_interval_s):
                    reading = await self._queue.get()
            except TimeoutError:
                self._check_stale()
                continue
            yield self._emit(reading)

    def _sync_health(self) -> None:
        if self._sub is not None:
            self.health.reconnects = self._sub.restarts

    def _check_stale(self) -> None:
        """Mark the device stale after `stale_after_s` without an advert; one log line, no readings invented."""
        self._sync_health()
        now = self.clock.now().mono_ns
        since = self._last_heard_ns if self._last_heard_ns is not None else self._since_ns
        if not self.stale and now - since >= self.stale_after_s * 1e9:
            self.stale = True
            self.health.state = "degraded"
            heard = "since it was last heard" if self._last_heard_ns is not None else "since the source started"
            log.warning("%s: no advert from %s for %.0f s %s; is it powered and in range?",
                        self.name, self.address, (now - since) / 1e9, heard)

    # --- the detection callback path --------------------------------------------------------------------------

    def _on_advert(self, device: Any, adv: Any) -> None:
        """From bleak's (BLEDevice, AdvertisementData) to readings on the queue. Runs on the event loop."""
        if str(device.address).upper() != self.address or self._decoder is None:
            return
        now = self.clock.now()
        self.adverts += 1
        self._last_heard_ns = now.mono_ns
        if self.stale:
            self.stale = False
            self.health.state = "ok"
            log.info("%s: %s is heard again", self.name, self.address)
        self._sync_health()
        before = self._decoder.last_counter
        pace = self._pace
        restart_below = pace.restart_below(now.mono_ns) if pace is not None else RESTART_BELOW
        try:
            decoded = self._decoder.decode(adv.service_data, name=adv.local_name, rssi=adv.rssi,
                                           t_s=now.mono_ns / 1e9, restart_below=restart_below,
                                           recorded=pace.recorded(now.mono_ns) if pace is not None else None)
        except CounterBeforeRestart as e:
            self._count_error(e.kind, "advert from %s ignored: %s: an advert recorded before the device restarted its "
                              "count, played again. If it was the device's own (reset again while Koto did not hear "
                              "it, or counting faster than it was seen to), it is read again by itself, at the latest "
                              "once its counter passes %d; to read it at once, run `sudo systemctl stop koto; sudo -u "
                              "koto koto bthome forget-counter %s; sudo systemctl start koto`", self.address, e.detail,
                              e.before, self.name)
            return
        except CounterBelow as e:
            self._count_error(e.kind, "advert from %s ignored: %s (kept across restarts): a recorded advert played "
                              "again, or the device was reset (new battery, re-flashed) while Koto did not hear it. "
                              "A reset device is read again once its counter passes %d; to read it at once, run "
                              "`sudo systemctl stop koto; sudo -u koto koto bthome forget-counter %s; sudo systemctl "
                              "start koto`", self.address, e.detail, e.last, self.name)
            return
        except FrameError as e:
            self._count_error(e.kind, "advert from %s ignored: %s", self.address, e.detail)
            return
        self._counted(before, now)
        if decoded is None:
            self.duplicates += 1
            return
        if decoded.unknown_object is not None:  # a newer object id at the end: read up to it, as the spec says
            self._rl.warning("unknown_tail", "%s: %s sends object id 0x%02x, which this Koto does not know: the "
                             "values before it are read, the rest of the advert is skipped (a newer Koto reads it)",
                             self.name, self.address, decoded.unknown_object)
        for reading in self._to_readings(decoded, adv.rssi, now):
            if self._queue.full():
                self._count_error("overflow", "readings are not being consumed; dropping the oldest")
                self._queue.get_nowait()
            self._queue.put_nowait(reading)

    def _counted(self, before: int | None, now: Now) -> None:
        """Keep the counter of an advert just read; say so when it went down (a device restarting its count)."""
        counter = self._decoder.last_counter if self._decoder is not None else None
        pace = self._pace
        if counter is None or counter == before or pace is None:
            return
        if before is not None and counter < before and counter < RESTART_BELOW:
            log.warning("%s: %s counts its encryption counter again from %d (it was at %d): read as the device "
                        "restarting (a new battery, a power cut)", self.name, self.address, counter, before)
        elif before is not None and counter < before and pace.kept is not None:
            log.warning("%s: %s counts its encryption counter again: %d, below the %d read from it at least %.0f s "
                        "ago; counting at most %.3g a second (the fastest it was seen), a count restarted since then "
                        "is below %d: read as the device restarting (a power cut, a new battery)", self.name,
                        self.address, counter, before, pace.unheard_s(now.mono_ns) or 0.0, pace.kept.rate or 0.0,
                        pace.restart_below(now.mono_ns))
        kept = pace.read(counter, now.mono_ns)
        if self.counters is not None:
            self.counters.keep(self.address, self._key_id, kept)

    def _to_readings(self, d: Decoded, rssi: int, now: Now) -> list[Reading]:
        out: list[Reading] = []

        def add(quantity: Quantity, value: int | str, signal: str = "") -> None:
            out.append(Reading(self.name, now.mono_ns, now.wall, now.boot_id, quantity, value,
                               wall_synced=now.synced, signal=signal))

        for key, value in d.sensors.items():
            base, channel = _split_key(key)
            target = SENSOR_QUANTITIES.get(base)
            if target is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            quantity, scale = target
            try:
                add(quantity, to_milli(value, scale), channel)
            except ValueError:
                self._count_error("bad_value", "advert from %s had a non-finite %s; ignored", self.address, key)
        for key, on in d.binary.items():
            base, channel = _split_key(key)
            signal = BINARY_SIGNALS.get(base)
            if signal is not None:
                add(Quantity.SIGNAL, "on" if on else "off", signal + (f"_{channel}" if channel else ""))
        if out:
            add(Quantity.RSSI_DBM, int(rssi))
        return out
