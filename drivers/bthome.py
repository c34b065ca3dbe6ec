"""A thin adapter around bthome-ble: service-data bytes in, what this one advert said out, or a counted error.

bthome-ble (the parser Home Assistant uses) does the decoding and the AES-CCM decryption. It is built for Home
Assistant's entity model, which leaves four gaps for a meter, closed here and nowhere else:

- Its `update()` returns every value it has *ever* seen for the device (sensor-state-data never clears its update
  dicts), so a later advert without power would still show the old power. We capture the values set during *this*
  call by overriding the public `update_sensor` / `update_binary_sensor` hooks.
- It swallows bad input silently (debug log lines, a `None` payload). We classify each rejected advert into a kind
  the health counters use: wrong length, unknown object id, bad MIC, replayed counter, missing bindkey, and so on.
  The framing check walks the payload with bthome-ble's own object table (`bthome_ble.const.MEAS_TYPES`), so the
  lengths come from the library; the values never come from us.
- Its packet-id filter accepts a repeat after 4 s. BlueZ re-reports cached service data whenever a property such
  as RSSI changes, so we also drop an advert whose raw bytes or packet id equal the last one we accepted.
- Its replay check (the encryption counter must not go down) remembers only what this process saw, from the first
  advert after every start. `BTHomeDecoder(last_counter=...)` resumes from the counter read before a restart
  (kept by the gateway, see `drivers.ble.CounterStore`), and the check runs here, before decrypting, with
  bthome-ble's rule: lower is refused unless it is below `RESTART_BELOW` (the device restarted its count), or
  below the higher limit `CounterPace` works out from how fast the device counts and how long it was not heard
  (a device restarted while the gateway was down, as in a power cut that takes both). A counter carries no epoch,
  so after such a restart an advert recorded before it is higher than the device's new count: while the counter
  from before the restart is kept (`Kept.before`), a higher counter up to it is read only when the device can have
  counted that far since it was last read (`CounterPace.recorded`); a step further is refused as that replay
  (`CounterBeforeRestart`).

An advert that does not frame completely is rejected whole: a meter must not bill half an advert.

`build_service_data` goes the other way (values -> advert bytes, optionally encrypted with `cryptography`'s
AESCCM). It generates test and demo data; parsing always goes through bthome-ble.

bthome-ble is imported lazily (on the first decoder), so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

from .errors import FrameError

RESTART_BELOW = 100  # bthome-ble's rule: a lower counter below this is a device that restarted its count, not a replay
RATE_SPAN_S = 30.0  # a device's counting rate is measured over at least this long (BlueZ delivers in bursts)
RATE_MAX = 50.0  # counter steps a second, at most: BLE's shortest advertising interval is 20 ms
RESTART_MARGIN = 2.0  # how much faster than the fastest rate seen a restarted device may have counted

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
BTHOME_V1_UUIDS = frozenset({"0000181c-0000-1000-8000-00805f9b34fb", "0000181e-0000-1000-8000-00805f9b34fb"})

_VARIABLE_LENGTH = frozenset({"raw", "string", "command"})


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one accepted advert said. Values are bthome-ble's native units (W, kWh, V, A), keyed like bthome-ble
    keys them ("power", "energy", "power_1" when a device sends two of a kind)."""

    packet_id: int | None
    encrypted: bool
    sensors: Mapping[str, Any]
    binary: Mapping[str, bool]
    title: str | None = None
    unknown_object: int | None = None  # the newer object id the advert was read up to (the rest skipped)


def _plain(value: Any) -> Any:
    """A value as a number, string, bool or None: bthome-ble gives BTHome's timestamp object (0x50) as a datetime,
    which `koto discover --json` and the logs would otherwise have to special-case. Found by `make fuzz`."""
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass
class _Capture:
    payload_seen: bool = False
    error: FrameError | None = None
    duplicate: bool = False
    packet_id: int | None = None
    unknown_object: int | None = None
    sensors: dict[str, Any] = field(default_factory=dict)
    binary: dict[str, bool] = field(default_factory=dict)


def check_frame(payload: bytes) -> tuple[int | None, int | None]:
    """Walk a decrypted BTHome v2 payload with bthome-ble's object table; return (the packet id if there is one,
    the object id the walk stopped at if it is one bthome-ble does not know).

    Objects come in ascending id order so that a receiver that does not know a newer id reads the objects before
    it and stops there (bthome.io/format), as bthome-ble does: those objects are whole, so they are read. Raises
    FrameError("unknown_object") when the first object is unknown (nothing to read), and "wrong_length" when an
    object is cut off.
    """
    from bthome_ble.const import MEAS_TYPES

    packet_id: int | None = None
    i, n = 0, len(payload)
    if n == 0:
        raise FrameError("wrong_length", "the advert carries no measurement objects")
    while i < n:
        oid = payload[i]
        meas = MEAS_TYPES.get(oid)
        if meas is None:
            if i == 0 or (packet_id is not None and i == 2):  # nothing (or only a packet id) before it
                raise FrameError("unknown_object", f"object id 0x{oid:02x} (byte {i}) is not a known BTHome v2 "
                                 "object, and nothing before it can be read")
            return packet_id, oid
        if meas.data_format in _VARIABLE_LENGTH:
            if i + 1 >= n:
                raise FrameError("wrong_length", f"object 0x{oid:02x} is cut off before its length byte")
            size = 1 + (payload[i + 1] & 0x1F) if meas.data_format == "command" else payload[i + 1]
            start = i + 2
        else:
            size = meas.data_length
            start = i + 1
        if start + size > n:
            raise FrameError(
                "wrong_length", f"object 0x{oid:02x} needs {size} bytes but only {n - start} are left"
            )
        if oid == 0x00:
            packet_id = payload[start]
        i = start + size
    return packet_id, None


@cache
def _parser_class() -> type[Any]:
    """bthome-ble's parser with three small hooks; built on first use so bthome_ble is imported lazily."""
    from bthome_ble import BTHomeBluetoothDeviceData

    # bthome-ble logs every bad advert at warning level, without rate limit; we count and log in plain words
    # ourselves (at most once a minute per device and kind), so its own lines would only be spam.
    logging.getLogger("bthome_ble").setLevel(logging.CRITICAL)

    class _KotoParser(BTHomeBluetoothDeviceData):
        def __init__(self, bindkey: bytes | None) -> None:
            self.koto = _Capture()
            self.koto_last_packet_id: int | None = None
            super().__init__(bindkey=bindkey)

        def _parse_payload(self, payload: bytes, adv_time: float) -> bool:
            # Called by bthome-ble with the (decrypted) payload; the one private hook we use, pinned by tests.
            cap = self.koto
            cap.payload_seen = True
            try:
                packet_id, cap.unknown_object = check_frame(payload)
            except FrameError as e:
                cap.error = e
                return False
            cap.packet_id = packet_id
            if packet_id is not None and packet_id == self.koto_last_packet_id:
                cap.duplicate = True
                return False
            ok: bool = super()._parse_payload(payload, adv_time)
            if not ok and packet_id is not None:
                cap.duplicate = True  # bthome-ble judged it an older packet (out of order through BlueZ)
            elif ok:
                self.koto_last_packet_id = packet_id
            return ok

        def update_sensor(self, key: str, native_unit_of_measurement: Any, native_value: Any,
                          device_class: Any = None, name: str | None = None, device_id: str | None = None) -> None:
            self.koto.sensors[key] = native_value
            super().update_sensor(key, native_unit_of_measurement, native_value, device_class, name, device_id)

        def update_binary_sensor(self, key: str, native_value: bool | None, device_class: Any = None,
                                 name: str | None = None, device_id: str | None = None) -> None:
            if native_value is not None:
                self.koto.binary[key] = bool(native_value)
            super().update_binary_sensor(key, native_value, device_class, name, device_id)

    return _KotoParser


def service_info(address: str, service_data: Mapping[str, bytes], *, name: str | None, rssi: int,
                 t_s: float) -> Any:
    """The habluetooth BluetoothServiceInfoBleak that bthome-ble's `update()` takes."""
    from habluetooth import BluetoothServiceInfoBleak

    return BluetoothServiceInfoBleak(
        name=name or address, address=address, rssi=rssi, manufacturer_data={},
        service_data=dict(service_data), service_uuids=[], source="koto",
        device=None,  # type: ignore[arg-type]  # bthome-ble never looks at it (its own tests pass None)
        advertisement=None,
        connectable=False, time=t_s, tx_power=None,
    )


class CounterBelow(FrameError):
    """An encrypted advert whose counter is below the last one read from the device (and not low enough to be the
    device restarting its count): a recorded advert played again, or a device reset that Koto missed the start of.
    Counted as `replayed_counter`; carries both counters so that the journal can say what to do."""

    def __init__(self, counter: int, last: int) -> None:
        self.counter = counter
        self.last = last
        super().__init__("replayed_counter", f"its encryption counter {counter} is below the last one read from it, "
                                             f"{last}")


class CounterBeforeRestart(FrameError):
    """An encrypted advert whose counter is above the last one read from the device but further up than the device
    can have counted since (`reach` and up), and not above the counter it had before it last restarted its count
    (`before`): an advert recorded before that restart, played again. Counted as `replayed_counter`."""

    def __init__(self, counter: int, last: int, reach: int, before: int) -> None:
        self.counter = counter
        self.last = last
        self.reach = reach
        self.before = before
        super().__init__("replayed_counter", f"its encryption counter {counter} is {counter - last} above the last one "
                                             f"read from it, {last}, further than the device can have counted since "
                                             f"(below {reach}), and not above {before}, where its count was before "
                                             "it restarted")


@dataclass(frozen=True, slots=True)
class Kept:
    """What is kept of an encrypted device's counter across restarts: the last counter read; the fastest its counter
    was seen rising, in steps a second (None until learned); and when that counter was read, as the boot it was read
    in (`boot_tag`) and that boot's monotonic clock (None for a counter kept before Koto kept these).

    After the device restarted its count, `before` is the counter it had before (the highest, after several); None
    again once a counter above it is read (`CounterPace`)."""

    counter: int
    rate: float | None = None
    boot: str | None = None
    mono_ns: int | None = None
    before: int | None = None


def boot_tag(boot_id: str) -> str:
    """The short name of a boot kept with a counter: the last 8 characters of its boot id (its random part)."""
    return boot_id[-8:]


class CounterPace:
    """How fast one encrypted device counts, and from that which lower counter is the device restarting its count.

    A device that restarted its count (a power cut, a new battery) did so after Koto last read it, so its counter is
    now at most (its rate) x (the time since Koto last read it). A lower counter within `RESTART_MARGIN` times that,
    plus `RESTART_BELOW`, is read as that restart; any other lower counter is a replay. The time is taken on the
    monotonic clock, never the wall clock (which a Pi without a real-time clock gets right only once NTP answers,
    and which whoever answers NTP sets): in the boot the counter was read in, the time since; in a later boot, the
    time since that boot (Linux's monotonic clock starts at the boot), which is less than the time since the
    counter was read, so the limit errs on the side of refusing. In a power cut that takes the Pi and the device
    together, the two started together, so it is the time the device has been counting.

    The rate is learned while the device is heard: counter steps over at least `RATE_SPAN_S`, the fastest such
    measure kept (rounded up, at most `RATE_MAX`), never across a step up further than that limit. None until
    learned; until then only `RESTART_BELOW` applies.

    The same bound tells an advert recorded before a restart of the count from the device's own (`recorded`): while
    `Kept.before` is kept, a step up from the last counter read that lands at or below it must be shorter than the
    bound over the time since that counter was read. Only within the boot it was read in: across a reboot the time
    is known only to be at least the uptime, and a device that counted on while the Pi was off for hours would be
    refused for as long. `before` is dropped once a counter above it is read. Not by time: a device's own adverts
    are refused only while it counts faster than twice its fastest learned rate, and such a device passes `before`
    sooner than the bound over the time since its restart would (while an advert recorded between its count and
    `before` would be read again from then on).
    """

    def __init__(self, kept: Kept | None, boot_id: str) -> None:
        self.kept = kept
        self._boot = boot_tag(boot_id)
        self._anchor: tuple[int, int] | None = None  # (counter, mono_ns) the next measure of the rate starts from

    def unheard_s(self, mono_ns: int) -> float | None:
        """At least how long ago the kept counter was read (None: not known)."""
        kept = self.kept
        if kept is None or kept.boot is None or kept.mono_ns is None:
            return None
        since = mono_ns - kept.mono_ns if kept.boot == self._boot else mono_ns
        return max(since, 0) / 1e9

    def restart_below(self, mono_ns: int) -> int:
        """A counter below the kept one and below this is read as the device restarting its count: how far it can
        have counted since it was last read, with the margin (also the bound of `recorded`)."""
        kept, unheard = self.kept, self.unheard_s(mono_ns)
        if kept is None or kept.rate is None or unheard is None:
            return RESTART_BELOW
        return RESTART_BELOW + int(min(kept.rate, RATE_MAX) * unheard * RESTART_MARGIN)

    def recorded(self, mono_ns: int) -> tuple[int, int] | None:
        """The counters (from, to: both included) of an advert recorded before the device restarted its count that
        the device itself cannot have reached since it was last read; None when there are none, or when how far it
        can have counted is not known (no rate learned; last read in an earlier boot)."""
        kept = self.kept
        if (kept is None or kept.before is None or kept.rate is None or kept.mono_ns is None
                or kept.boot != self._boot):
            return None
        reach = kept.counter + self.restart_below(mono_ns)
        return (reach, kept.before) if reach <= kept.before else None

    def read(self, counter: int, mono_ns: int) -> Kept:
        """An advert with `counter` was read at `mono_ns`: what to keep now."""
        kept = self.kept
        rate = kept.rate if kept is not None else None
        anchor = self._anchor
        if anchor is None or counter < anchor[0]:
            self._anchor = (counter, mono_ns)  # the first advert read, or the device counting again from low
        elif kept is not None and rate is not None and counter - kept.counter >= self.restart_below(mono_ns):
            # Further up than it can have counted since the last advert: not counting but something else (an
            # advert recorded before the device restarted its count, played back; a device set to send faster,
            # whose new pace the next measure learns). Not learned from, so a replay cannot widen the limit.
            self._anchor = (counter, mono_ns)
        elif mono_ns - anchor[1] >= RATE_SPAN_S * 1e9:
            per_s = (counter - anchor[0]) * 1e9 / (mono_ns - anchor[1])
            seen = min(math.ceil(per_s * (1000 - 1e-3)) / 1000, RATE_MAX)  # up to the next 0.001, past 1 ppm
            rate = seen if rate is None else max(rate, seen)
            self._anchor = (counter, mono_ns)
        before = kept.before if kept is not None else None
        if kept is not None and counter < kept.counter:  # (a lower counter is read only as a restart of the count)
            before = max(kept.counter, before or 0)
        elif before is not None and counter > before:
            before = None
        self.kept = Kept(counter, rate, self._boot, mono_ns, before)
        return self.kept


class BTHomeDecoder:
    """Decodes the adverts of one device. Keeps bthome-ble's per-device state (packet id, encryption counter).

    `last_counter` is the encryption counter of the last advert read from this device before a restart (None: none
    known). The first advert must then have a higher counter (or one below `RESTART_BELOW`, or below the
    `restart_below` given to `decode`: a device restarting its count); one with the same counter is the advert
    already read, heard again, and is dropped as a repeat. A higher counter within the `recorded` given to `decode`
    (`CounterPace.recorded`) is refused.
    """

    def __init__(self, address: str, bindkey: bytes | None = None, *, last_counter: int | None = None) -> None:
        if bindkey is not None and len(bindkey) != 16:
            raise ValueError("a BTHome bindkey is 16 bytes (32 hex digits)")
        self.address = address
        self.bindkey = bindkey
        self._parser = _parser_class()(bindkey)
        self._last_raw: bytes | None = None
        self._last_counter: int | None = last_counter  # of the last encrypted advert decoded
        self._resumed = last_counter is not None  # from before a restart; cleared by the first advert decoded

    @property
    def last_counter(self) -> int | None:
        """The encryption counter of the last encrypted advert decoded (or the one resumed from)."""
        return self._last_counter

    def _fresh(self, counter: int, restart_below: int, recorded: tuple[int, int] | None) -> bool:
        """Whether an encrypted advert's counter may be read (False: the advert read last before a restart, again);
        raises CounterBelow for a lower one, CounterBeforeRestart for a higher one within `recorded`. Checked before
        decrypting, as bthome-ble checks its own."""
        last = self._last_counter
        if last is None or counter > last:
            if last is not None and recorded is not None and recorded[0] <= counter <= recorded[1]:
                raise CounterBeforeRestart(counter, last, *recorded)
            return True
        if counter == last:
            return not self._resumed  # this run's own equal counter is judged after decrypting (same or new content)
        if counter < max(restart_below, RESTART_BELOW):
            return True  # the device restarted its count (a battery change, a power cut, a wrap): bthome-ble's rule,
            # or one restarted while it was not heard, no further than it can have counted since (CounterPace)
        raise CounterBelow(counter, last)

    def decode(self, service_data: Mapping[str, bytes], *, name: str | None = None, rssi: int = 0,
               t_s: float = 0.0, restart_below: int = RESTART_BELOW,
               recorded: tuple[int, int] | None = None) -> Decoded | None:
        """Decode one advert. Returns None for a repeat of what we already have; raises FrameError for bad input.

        `t_s` is a monotonic time in seconds (bthome-ble's 4 s duplicate window uses it). A counter below the last one
        read is the device restarting its count when it is below `restart_below` (`CounterPace.restart_below`; never
        less than `RESTART_BELOW`), and raises CounterBelow otherwise. A higher counter within `recorded` (from, to;
        `CounterPace.recorded`) raises CounterBeforeRestart.
        """
        raw = service_data.get(BTHOME_UUID)
        if raw is None:
            if BTHOME_V1_UUIDS & service_data.keys():
                raise FrameError("unsupported_version", "the device sends BTHome v1; set its firmware to BTHome v2")
            raise FrameError("not_bthome", "the advert carries no BTHome service data")
        raw = bytes(raw)
        if raw == self._last_raw:
            return None  # BlueZ reporting a property change of the advert we already decoded
        if not raw:
            raise FrameError("wrong_length", "the BTHome service data is empty")
        info = raw[0]
        version = (info >> 5) & 7
        if version != 2:
            raise FrameError("bad_version", f"the advert says BTHome version {version}; only version 2 exists")
        encrypted = bool(info & 0x01)
        body = len(raw) - 1 - (6 if info & 0x02 else 0)
        if encrypted and self.bindkey is None:
            raise FrameError("no_bindkey", "the device sends encrypted adverts but no bindkey is configured")
        if not encrypted and self.bindkey is not None:
            raise FrameError(
                "not_encrypted", "a plain advert came from a device configured with a bindkey (spoofed?)"
            )
        if body < (8 + 2 if encrypted else 2):
            raise FrameError("wrong_length", f"the advert is too short ({len(raw)} bytes)")
        counter = int.from_bytes(raw[-8:-4], "little") if encrypted else 0  # (the nonce's last part)
        if encrypted and not self._fresh(counter, restart_below, recorded):
            return None

        p = self._parser
        if encrypted and self._last_counter is not None and counter < self._last_counter:
            p.encryption_counter = 0.0  # a restart of the count, read as such: bthome-ble must not refuse it either
        p.koto = cap = _Capture()
        # Only the v2 data, which was checked above: bthome-ble also parses BTHome v1 service data (0x181C, 0x181E)
        # beside it, and an advert carrying both came out with v1's values (make test's fuzzing, 2026-12-07: an
        # energy of 2.2e17 kWh from a plain v1 payload next to a v2 power reading).
        p.update(service_info(self.address, {BTHOME_UUID: raw}, name=name, rssi=rssi, t_s=t_s))
        if cap.error is not None:
            raise cap.error
        if not cap.payload_seen:
            if encrypted and p.decryption_failed:
                raise FrameError("bad_mic", "decryption failed: wrong bindkey or corrupted advert")
            if encrypted:
                raise FrameError("replayed_counter", "the encryption counter went backwards (replayed advert?)")
            raise FrameError("not_parsed", "bthome-ble did not accept the advert")
        if encrypted:  # the counter must increase: bthome-ble refuses only a lower one
            if counter == self._last_counter and self._last_raw is not None:
                raise FrameError("replayed_counter", "the encryption counter did not increase (a replayed or forged "
                                                     "advert with new content?)")
            self._last_counter = counter
            self._resumed = False
        self._last_raw = raw
        if cap.duplicate:
            return None
        sensors = {k: _plain(v) for k, v in cap.sensors.items() if k not in ("signal_strength", "packet_id")}
        return Decoded(cap.packet_id, encrypted, sensors, dict(cap.binary), p.title, cap.unknown_object)


# ---------------------------------------------------------------------------------------------------------------
# Building adverts (test and demo data only)


def _uint(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{what} {value} does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def build_service_data(
    *,
    packet_id: int | None = None,
    power_mw: int | None = None,
    energy_mwh: int | None = None,
    voltage_mv: int | None = None,
    current_ma: int | None = None,
    power_on: bool | None = None,
    extra: Sequence[tuple[int, bytes]] = (),
    bindkey: bytes | None = None,
    mac: str | None = None,
    counter: int = 0,
) -> bytes:
    """BTHome v2 service data (for UUID 0xFCD2) carrying the given values, plain or AES-CCM encrypted.

    Resolutions are BTHome's: power 0.01 W (rounded half-even), energy 1 Wh (floored, as a register truncates),
    voltage 1 mV, current 1 mA. Objects are written in ascending id order, as the spec asks. `extra` adds raw
    (object id, data bytes) pairs. Encrypting needs the device MAC (`mac`, "AA:BB:...") and a 32-bit `counter`.
    """
    objs: list[tuple[int, bytes]] = list(extra)
    if packet_id is not None:
        objs.append((0x00, _uint(packet_id, 1, "packet id")))
    if power_mw is not None:
        centiwatts = int((Decimal(power_mw) / 10).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        if 0 <= centiwatts < 1 << 24:
            objs.append((0x0B, _uint(centiwatts, 3, "power")))
        else:
            objs.append((0x5C, centiwatts.to_bytes(4, "little", signed=True)))
    if voltage_mv is not None:
        objs.append((0x0C, _uint(voltage_mv, 2, "voltage")))
    if power_on is not None:
        objs.append((0x10, b"\x01" if power_on else b"\x00"))
    if current_ma is not None:
        objs.append((0x43, _uint(current_ma, 2, "current")))
    if energy_mwh is not None:
        wh = int((Decimal(energy_mwh) / 1000).quantize(Decimal(1), rounding=ROUND_FLOOR))
        objs.append((0x4D, _uint(wh, 4, "energy")))
    objs.sort(key=lambda o: o[0])
    payload = b"".join(bytes([oid]) + data for oid, data in objs)
    if bindkey is None:
        return bytes([0x40]) + payload
    if mac is None:
        raise ValueError("encrypting a BTHome advert needs the device MAC (it is part of the nonce)")
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    info = 0x41
    count = _uint(counter, 4, "counter")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + count
    sealed = AESCCM(bindkey, tag_length=4).encrypt(nonce, payload, None)
    return bytes([info]) + sealed[:-4] + count + sealed[-4:]
