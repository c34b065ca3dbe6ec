"""An independent emulator of the three meters Koto supports, written from the vendors' Modbus documents only.

Nothing here was taken from Koto's register maps (drivers/registers/*.toml) or its simulator (drivers/modbus_sim.py):
a shared misreading of a datasheet would otherwise pass both. The register tables below are transcribed from:

* Eastron SDM120-Modbus protocol (input registers, function code 04; each parameter an IEEE 754 float32 in two
  consecutive 16-bit registers, high word first), as tabulated in reaper7/SDM_Energy_Meter SDM.h ("SDM 120 & SDM
  120CT registers", citing eastroneurope.com SDM120 PROTOCOL.pdf) and the Eastron SDM230/SDM120 protocol tables
  (30001 voltage 0x0000, 30007 current 0x0006, 30013 active power 0x000C, ..., 30071 frequency 0x0046, 30073 import
  active energy 0x0048, 30075 export 0x004A, 30343 total active energy 0x0156, 30345 total reactive 0x0158).
* Eastron SDM630-Modbus V2 protocol / SDM630-Modbus MID V2 user manual (B+G e-tech, section 1.2 input registers,
  1.3.1 holding registers; manualshive.com/en/manual/eastron/sdm630-modbus-mid-v2/522581 p. 27-28) and the same
  SDM.h "SDM 630 registers" list: 30001-30005 phase voltages, 30007-30011 currents, 30013-30017 phase powers,
  30053 total system power 0x0034, 30071 frequency 0x0046, 30073/30075 import/export kWh, 30343 total kWh 0x0156,
  30347-30351 L1-L3 import kWh 0x015A-0x015E, 30353-30357 export 0x0160-0x0164, 30359-30363 L1-L3 total kWh
  0x0166-0x016A; holding register 40011 (0x000A) "System Type ... 3p4w = 3, 3p3w = 2 & 1p2w = 1", float.
  "Each request for data must be restricted to 30 parameters or less. Exceeding the 30 parameter limit will cause a
  Modbus Protocol exception code to be returned." "Any parameter with a cross (X) will return the value zero."
  Requests cover whole parameters (an even number of registers from a parameter's start: nobrega8/mbmap-library
  eastron/sdm230.mbmap.json notes, from Eastron's SDM230 protocol V1.1).
  Eastron notes: "Total kWh equals to Import + export" (SDM72D-M manual V1.5 input register notes).
* Peacefair PZEM-004T V3.0 user manual (innovatorsguru.com PZEM-004T-V3.0-Datasheet-User-Manual.pdf, read at
  itsmanual.com/innovatorsguru/ac-communication-v3-0 and the register table quoted in jabastien/STM32_PZEM016
  README): input registers 0x0000 voltage (1 LSB = 0.1 V), 0x0001/0x0002 current low/high 16 bits (0.001 A),
  0x0003/0x0004 power low/high (0.1 W), 0x0005/0x0006 energy low/high (1 Wh), 0x0007 frequency (0.1 Hz), 0x0008
  power factor (0.01), 0x0009 alarm status (0xFFFF alarm, 0x0000 not); holding registers 0x0001 power alarm
  threshold (1 W), 0x0002 Modbus-RTU address (0x0001-0x00F7); function codes 0x03, 0x04, 0x06, 0x41 (calibration,
  internal), 0x42 (reset energy: "Slave address + 0x42 + CRC", error reply 0xC2 + abnormal code); abnormal codes
  0x01 illegal function, 0x02 illegal address, 0x03 illegal data, 0x04 slave error; "The address range of the slave
  is 0x01 ~ 0xF7. The address 0x00 is used as the broadcast address, the slave does not need to reply the master.
  The address 0xF8 is used as the general address, this address can be only used in single-slave environment";
  9600 baud, 8 data bits, 1 stop bit, no parity. The manual's worked example ("0x01 + 0x04 + 0x14 + 0x08 + 0x98 +
  0x03 + 0xE8 + 0x00 + 0x00 ...": 220.0 V, 1.000 A, 220.0 W, 0 Wh, 50.0 Hz, PF 1.00) shows the low word first, as
  ESPHome's pzemac.cpp (pzem_get_32bit: high word from i + 2) and Tasmota/mandulaj's PZEM004Tv30.cpp decode it.

Framing and CRC are pymodbus' (its RTU server and FramerRTU); this module only answers the PDUs. It is served on one
end of a pair of pseudo-terminals joined by a relay (the driver opens `bus.port`, a symlink to the other end), and
the relay records every byte on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import time
import tty
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_SINGLE = 0x06
FC_PZEM_RESET_ENERGY = 0x42
PZEM_GENERAL_ADDRESS = 0xF8


@dataclass(frozen=True, slots=True)
class Request:
    """One request a meter answered (or refused): what the gateway asked for."""

    device_id: int
    function: int
    start: int
    count: int
    answer: str  # "ok" or the exception code's name
    t: float = field(default_factory=time.monotonic)

    def covers(self, register: int) -> bool:
        return self.start <= register < self.start + self.count


def float32_words(value: float) -> tuple[int, int]:
    """IEEE 754 single precision, high word first (Eastron: 'two consecutive 16 bit registers')."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


def float32(value: float) -> float:
    """The value a float32 register really holds."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


class EmulatedMeter:
    """The part common to the three meters: who answers, which requests were seen, injected exception replies."""

    model = ""

    def __init__(self, address: int) -> None:
        self.address = address
        self.requests: list[Request] = []
        self.violations: list[str] = []  # requests the vendor's document does not allow
        # register -> exception code: any read covering that register is refused (e.g. an "illegal address")
        self.refuse: dict[int, ExcCodes] = {}
        self.silent = False

    def answers(self, device_id: int) -> bool:
        return not self.silent and device_id == self.address

    def reply_address(self, device_id: int) -> int:
        return device_id

    def _log(self, device_id: int, function: int, start: int, count: int, answer: ExcCodes | None) -> None:
        self.requests.append(Request(device_id, function, start, count, "ok" if answer is None else answer.name))

    def read(self, device_id: int, function: int, start: int, count: int) -> list[int] | ExcCodes:
        refused = next((code for reg, code in self.refuse.items() if start <= reg < start + count), None)
        result = refused if refused is not None else self._read(function, start, count)
        self._log(device_id, function, start, count, result if isinstance(result, ExcCodes) else None)
        return result

    def write(self, device_id: int, function: int, start: int, values: Sequence[int]) -> ExcCodes | None:
        result = self._write(function, start, values)
        self._log(device_id, function, start, len(values), result)
        return result

    def _read(self, function: int, start: int, count: int) -> list[int] | ExcCodes:
        raise NotImplementedError

    def _write(self, function: int, start: int, values: Sequence[int]) -> ExcCodes | None:
        self.violations.append(f"write fc {function} at 0x{start:04X}: not supported")
        return ExcCodes.ILLEGAL_FUNCTION

    def reads_of(self, register: int, function: int = FC_READ_INPUT) -> list[Request]:
        return [r for r in self.requests if r.function == function and r.covers(register)]


class EastronMeter(EmulatedMeter):
    """An Eastron meter: float32 parameters, two registers each, high word first; FC 04 measurements, FC 03 setup."""

    INPUT: ClassVar[dict[str, int]] = {}
    HOLDING: ClassVar[dict[str, int]] = {}
    INPUT_END = 0  # first register past the table: reads beyond it are refused
    MAX_REGISTERS = 60  # "restricted to 30 parameters or less"

    def __init__(self, address: int, **values: float) -> None:
        super().__init__(address)
        self.values: dict[str, float] = dict.fromkeys(self.INPUT, 0.0)
        self.values.update(dict.fromkeys(self.HOLDING, 0.0))
        self.set(**values)

    def set(self, **values: float) -> None:
        for name, v in values.items():
            if name not in self.values:
                raise KeyError(f"{self.model} has no parameter {name!r}; it has {sorted(self.values)}")
            self.values[name] = float(v)

    def served(self, name: str) -> float:
        """The exact value the register holds (the float32 nearest to what was set)."""
        return float32(self.values[name])

    def _read(self, function: int, start: int, count: int) -> list[int] | ExcCodes:
        if function == FC_READ_INPUT:
            table, end = self.INPUT, self.INPUT_END
        elif function == FC_READ_HOLDING:
            table, end = self.HOLDING, max(self.HOLDING.values(), default=-2) + 2
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        if count > self.MAX_REGISTERS:
            self.violations.append(f"fc {function} 0x{start:04X} x{count}: more than 30 parameters")
            return ExcCodes.ILLEGAL_VALUE
        if start % 2 or count % 2 or count == 0:
            self.violations.append(f"fc {function} 0x{start:04X} x{count}: not whole float32 parameters")
            return ExcCodes.ILLEGAL_ADDRESS
        if start + count > end:
            self.violations.append(f"fc {function} 0x{start:04X} x{count}: past the last parameter 0x{end - 2:04X}")
            return ExcCodes.ILLEGAL_ADDRESS
        by_address = {a: n for n, a in table.items()}
        if function == FC_READ_HOLDING and any(a not in by_address for a in range(start, start + count, 2)):
            return ExcCodes.ILLEGAL_ADDRESS  # a setup register the meter does not have
        words: list[int] = []
        for a in range(start, start + count, 2):
            # an address between the document's parameters (or one marked X for the wiring) reads as zero
            words.extend(float32_words(self.values[by_address[a]] if a in by_address else 0.0))
        return words


def _sdm120_input() -> dict[str, int]:
    return {
        "voltage_v": 0x0000,  # 30001 Voltage, V
        "current_a": 0x0006,  # 30007 Current, A
        "power_w": 0x000C,  # 30013 Active power, W (negative: export)
        "apparent_va": 0x0012,  # 30019 Apparent power, VA
        "reactive_var": 0x0018,  # 30025 Reactive power, VAr
        "power_factor": 0x001E,  # 30031 Power factor
        "phase_angle": 0x0024,  # 30037 Phase angle, degrees
        "frequency_hz": 0x0046,  # 30071 Frequency, Hz
        "import_kwh": 0x0048,  # 30073 Import active energy, kWh
        "export_kwh": 0x004A,  # 30075 Export active energy, kWh
        "import_kvarh": 0x004C,  # 30077 Import reactive energy, kVArh
        "export_kvarh": 0x004E,  # 30079 Export reactive energy, kVArh
        "total_demand_w": 0x0054,  # 30085 Total system power demand, W
        "max_demand_w": 0x0056,  # 30087 Maximum total system power demand, W
        "current_demand_a": 0x0102,  # 30259 Current demand, A
        "max_current_demand_a": 0x0108,  # 30265 Maximum current demand, A
        "total_kwh": 0x0156,  # 30343 Total active energy, kWh (import + export)
        "total_kvarh": 0x0158,  # 30345 Total reactive energy, kVArh
    }


class SDM120(EastronMeter):
    model = "sdm120"
    INPUT: ClassVar[dict[str, int]] = _sdm120_input()
    INPUT_END = 0x0158 + 2
    # 40013 relay pulse width, 40019 network parity stop, 40021 meter ID, 40029 baud rate (no 40011 system type)
    HOLDING: ClassVar[dict[str, int]] = {"pulse_width": 0x000C, "parity_stop": 0x0012, "meter_id": 0x0014,
                                         "baud_code": 0x001C}

    def __init__(self, address: int = 1, **values: float) -> None:
        defaults = {"voltage_v": 230.0, "frequency_hz": 50.0, "power_factor": 1.0, "meter_id": float(address),
                    "baud_code": 0.0}  # 0 = 2400 baud, the SDM120's default
        super().__init__(address, **{**defaults, **values})


PHASES = ("L1", "L2", "L3")


def _sdm630_input() -> dict[str, int]:
    t: dict[str, int] = {}
    for i, ph in enumerate(PHASES):
        p = ph.lower()
        t[f"voltage_v_{p}"] = 0x0000 + 2 * i  # 30001/3/5 Phase n line to neutral volts
        t[f"current_a_{p}"] = 0x0006 + 2 * i  # 30007/9/11 Phase n current
        t[f"power_w_{p}"] = 0x000C + 2 * i  # 30013/15/17 Phase n power, W
        t[f"va_{p}"] = 0x0012 + 2 * i  # 30019.. Phase n volt amps
        t[f"var_{p}"] = 0x0018 + 2 * i  # 30025.. Phase n volt amps reactive
        t[f"power_factor_{p}"] = 0x001E + 2 * i  # 30031.. Phase n power factor
        t[f"phase_angle_{p}"] = 0x0024 + 2 * i  # 30037.. Phase n phase angle
        t[f"line_voltage_v_{p}"] = 0x00C8 + 2 * i  # 30201/3/5 Line 1 to line 2 volts ...
        t[f"import_kwh_{p}"] = 0x015A + 2 * i  # 30347/49/51 L1..L3 import kWh
        t[f"export_kwh_{p}"] = 0x0160 + 2 * i  # 30353/55/57 L1..L3 export kWh
        t[f"total_kwh_{p}"] = 0x0166 + 2 * i  # 30359/61/63 L1..L3 total kWh
        t[f"import_kvarh_{p}"] = 0x016C + 2 * i  # 30365.. L1..L3 import kvarh
        t[f"export_kvarh_{p}"] = 0x0172 + 2 * i  # 30371.. L1..L3 export kvarh
        t[f"total_kvarh_{p}"] = 0x0178 + 2 * i  # 30377/79/81 L1..L3 total kvarh
    t.update({
        "average_voltage_v": 0x002A,  # 30043 Average line to neutral volts
        "average_current_a": 0x002E,  # 30047 Average line current
        "sum_current_a": 0x0030,  # 30049 Sum of line currents
        "total_power_w": 0x0034,  # 30053 Total system power, W
        "total_va": 0x0038,  # 30057 Total system volt amps
        "total_var": 0x003C,  # 30061 Total system VAr
        "total_power_factor": 0x003E,  # 30063 Total system power factor
        "total_phase_angle": 0x0042,  # 30067 Total system phase angle
        "frequency_hz": 0x0046,  # 30071 Frequency of supply voltages
        "import_kwh": 0x0048,  # 30073 Total import kWh
        "export_kwh": 0x004A,  # 30075 Total export kWh
        "import_kvarh": 0x004C,  # 30077 Total import kVArh
        "export_kvarh": 0x004E,  # 30079 Total export kVArh
        "total_vah": 0x0050,  # 30081 Total VAh
        "ah": 0x0052,  # 30083 Ah
        "total_demand_w": 0x0054,  # 30085 Total system power demand
        "max_demand_w": 0x0056,  # 30087 Maximum total system power demand
        "neutral_current_a": 0x00E0,  # 30225 Neutral current
        "total_kwh": 0x0156,  # 30343 Total kWh
        "total_kvarh": 0x0158,  # 30345 Total kvarh
    })
    return t


class SDM630(EastronMeter):
    model = "sdm630"
    INPUT: ClassVar[dict[str, int]] = _sdm630_input()
    INPUT_END = 0x017C + 2
    # 40003 demand period, 40011 system type (3p4w = 3, 3p3w = 2, 1p2w = 1), 40019 parity, 40021 address, 40029 baud
    HOLDING: ClassVar[dict[str, int]] = {"demand_period": 0x0002, "system_type": 0x000A, "parity_stop": 0x0012,
                                         "meter_id": 0x0014, "baud_code": 0x001C}

    def __init__(self, address: int = 1, **values: float) -> None:
        defaults: dict[str, float] = {"frequency_hz": 50.0, "system_type": 3.0, "demand_period": 60.0,
                                      "meter_id": float(address), "baud_code": 2.0}  # 2 = 9600 baud
        for p in ("l1", "l2", "l3"):
            defaults[f"voltage_v_{p}"] = 230.0
            defaults[f"power_factor_{p}"] = 1.0
        super().__init__(address, **{**defaults, **values})


class PZEM004T(EmulatedMeter):
    """PZEM-004T v3.0: integer registers, 32-bit values low 16-bit word first; general address 0xF8."""

    model = "pzem004t"
    INPUT_COUNT = 10  # 0x0000-0x0009

    def __init__(self, address: int = 1, *, general_reply: str = "request", **values: Decimal | int | str) -> None:
        """`general_reply`: the address a reply to the general address 0xF8 carries. The manual only says "Slave
        Address + 0x04 + ...": "request" echoes 0xF8, "own" gives the meter's own address (an undocumented
        variant, kept to probe a gateway's tolerance)."""
        super().__init__(address)
        self.general_reply = general_reply
        self.raw = {"voltage": 2300, "current": 0, "power": 0, "energy": 0, "frequency": 500, "power_factor": 100}
        self.alarm_threshold_w = 23000  # holding 0x0001
        self.set(**values)

    # the manual's resolutions: one count is this many units
    SCALE: ClassVar[dict[str, Decimal]] = {"voltage": Decimal("0.1"), "current": Decimal("0.001"),
                                           "power": Decimal("0.1"), "energy": Decimal(1),
                                           "frequency": Decimal("0.1"), "power_factor": Decimal("0.01")}
    LIMIT: ClassVar[dict[str, int]] = {"voltage": 0xFFFF, "current": 0xFFFFFFFF, "power": 0xFFFFFFFF,
                                       "energy": 0xFFFFFFFF, "frequency": 0xFFFF, "power_factor": 0xFFFF}

    def set(self, **values: Decimal | int | str) -> None:
        """Set in the manual's units (V, A, W, Wh, Hz, PF): voltage="229.8", current="70.123", energy=123456."""
        for name, v in values.items():
            counts = Decimal(str(v)) / self.SCALE[name]
            if counts != counts.to_integral_value() or not 0 <= counts <= self.LIMIT[name]:
                raise ValueError(f"{name}={v} is not a whole number of {self.SCALE[name]} within the register")
            self.raw[name] = int(counts)

    def answers(self, device_id: int) -> bool:
        return not self.silent and device_id in (self.address, PZEM_GENERAL_ADDRESS)

    def reply_address(self, device_id: int) -> int:
        if device_id == PZEM_GENERAL_ADDRESS and self.general_reply == "own":
            return self.address
        return device_id

    def input_registers(self) -> list[int]:
        r = self.raw
        alarm = 0xFFFF if r["power"] > self.alarm_threshold_w * 10 else 0x0000

        def low_high(v: int) -> list[int]:
            return [v & 0xFFFF, v >> 16]  # "low 16 bits" register first, then "high 16 bits"

        return [r["voltage"], *low_high(r["current"]), *low_high(r["power"]), *low_high(r["energy"]),
                r["frequency"], r["power_factor"], alarm]

    def _read(self, function: int, start: int, count: int) -> list[int] | ExcCodes:
        if function == FC_READ_INPUT:
            regs = dict(enumerate(self.input_registers()))
        elif function == FC_READ_HOLDING:
            regs = {0x0001: self.alarm_threshold_w, 0x0002: self.address}
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        wanted = range(start, start + count)
        if count == 0 or any(a not in regs for a in wanted):
            self.violations.append(f"fc {function} 0x{start:04X} x{count}: outside the manual's registers")
            return ExcCodes.ILLEGAL_ADDRESS
        return [regs[a] for a in wanted]

    def _write(self, function: int, start: int, values: Sequence[int]) -> ExcCodes | None:
        if function != FC_WRITE_SINGLE or len(values) != 1:
            return ExcCodes.ILLEGAL_FUNCTION
        (value,) = values
        if start == 0x0001:
            self.alarm_threshold_w = value
        elif start == 0x0002:
            if not 0x0001 <= value <= 0x00F7:
                return ExcCodes.ILLEGAL_VALUE
            self.address = value
        else:
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def reset_energy(self, device_id: int) -> None:
        self.raw["energy"] = 0
        self._log(device_id, FC_PZEM_RESET_ENERGY, 0, 0, None)


class PzemResetEnergy(ModbusPDU):
    """PZEM function 0x42: request "Slave address + 0x42 + CRC", correct reply the same, error reply 0xC2 + code."""

    function_code = FC_PZEM_RESET_ENERGY
    rtu_frame_size = 4  # address, function, CRC (2)

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        code = context.reset_energy(device_id)
        if code is not None:
            return ExceptionResponse(self.function_code, code)
        return PzemResetEnergy(dev_id=device_id, transaction_id=self.transaction_id)


class _PtyWire:
    """Two pseudo-terminals joined by a relay: the server opens one, the driver the other (via a symlink)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.server_path = ""
        self.bytes: list[tuple[float, str, bytes]] = []  # (time, "to_meter" | "to_gateway", data)
        self._fds: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client_slave_fd = -1

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        pairs = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._fds += [master, slave]
            pairs.append((master, slave))
        (ms, ss), (mc, sc) = pairs
        self.server_path = os.ttyname(ss)
        self.client_slave_fd = sc
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(sc))
        self._loop.add_reader(mc, self._relay, mc, ms, "to_meter")
        self._loop.add_reader(ms, self._relay, ms, mc, "to_gateway")

    def _relay(self, src: int, dst: int, direction: str) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self.bytes.append((time.monotonic(), direction, data))
            with contextlib.suppress(OSError):
                os.write(dst, data)

    def stop(self) -> None:
        if self._loop is not None:
            for fd in self._fds[0::2]:
                self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()


class VendorBus:
    """Meters on one RS-485 line, served by pymodbus' RTU server through a pty pair.

    async with VendorBus([SDM120(1), PZEM004T(3)]) as bus:
        source = build_source("x", {"driver": "modbus", "port": bus.port, ...}, clock=...)

    It is pymodbus' datastore ("context"): `async_getValues`/`async_setValues` are called by pymodbus' PDUs with the
    request's device id. An address no meter has stays silent, as on a real line.
    """

    def __init__(self, meters: Iterable[EmulatedMeter], *, baud: int = 9600, directory: str | None = None) -> None:
        self.meters = list(meters)
        self.baud = baud
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="koto-vendor-")
            directory = self._tmp.name
        self.port = str(Path(directory) / "ttyVENDOR0")
        self.wire = _PtyWire(Path(self.port))
        self.server: ModbusSerialServer | None = None
        self._replying: EmulatedMeter | None = None

    # ---- pymodbus datastore interface --------------------------------------------------------------------------
    def _meter(self, device_id: int) -> EmulatedMeter:
        for m in self.meters:
            if m.answers(device_id):
                self._replying = m
                return m
        raise NoSuchIdException(f"no meter at {device_id}")

    def device_ids(self) -> list[int]:
        return [m.address for m in self.meters]

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | ExcCodes:
        if func_code == FC_WRITE_SINGLE and self._replying is not None:
            # pymodbus reads back the register it just wrote to echo it: the meter that took the write answers
            # (under the address it was asked at, even when the write changed that address)
            back = self._replying._read(FC_READ_HOLDING, address, count)
            return back
        return self._meter(device_id).read(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int]) -> ExcCodes | None:
        return self._meter(device_id).write(device_id, func_code, address, values)

    def reset_energy(self, device_id: int) -> ExcCodes | None:
        m = self._meter(device_id)
        if not isinstance(m, PZEM004T):
            return ExcCodes.ILLEGAL_FUNCTION
        m.reset_energy(device_id)
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and self._replying is not None:
            pdu.dev_id = self._replying.reply_address(pdu.dev_id)
        return pdu

    # ---- life cycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.wire.start()
        placeholder = SimDevice(id=1, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)])
        self.server = ModbusSerialServer(placeholder, framer=FramerType.RTU, port=self.wire.server_path,
                                         baudrate=self.baud, ignore_missing_devices=True,
                                         custom_pdu=[PzemResetEnergy], trace_pdu=self._trace_pdu)
        # pymodbus' own datastores cannot refuse one block, answer for two addresses, or stay silent for an
        # unknown address (its SimCore falls back to device 0 or fails the request); the request handler only
        # calls async_getValues / async_setValues (and PzemResetEnergy reset_energy) on it.
        self.server.context = self  # type: ignore[assignment]
        await self.server.serve_forever(background=True)
        for _ in range(100):  # the serial transport opens the pty asynchronously
            if self.server.transport is not None:
                break
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
        self.wire.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> VendorBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
