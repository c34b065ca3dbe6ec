"""The one type that crosses from drivers into metering.

Everything billable is an integer in milli-units (mW, mWh, pulses): floats never reach a total. A driver converts
its device's native unit once, at the edge, with `to_milli` — the same way every time, so a register read twice gives
the same integer twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum


class Quantity(StrEnum):
    """What a reading measures. The first four feed the meter; the rest are diagnostics."""

    POWER_MW = "power_mw"  # instantaneous active power, milliwatts
    ENERGY_MWH = "energy_mwh"  # a cumulative energy register, milliwatt-hours
    PULSES = "pulses"  # a cumulative pulse count (S0); converted with the source's imp/kWh
    SIGNAL = "signal"  # a named digital or enumerated state: value is a str ("on", "cool", ...)
    VOLTAGE_MV = "voltage_mv"
    CURRENT_MA = "current_ma"
    FREQUENCY_MHZ = "frequency_mhz"
    RSSI_DBM = "rssi_dbm"
    ANALOG = "analog"  # a calibrated analogue value in milli-units of the source's own unit


BILLABLE = frozenset({Quantity.POWER_MW, Quantity.ENERGY_MWH, Quantity.PULSES})

# The units devices report in, as the factor to each quantity's milli-unit (`to_milli(value, factor)`).
UNITS: dict[Quantity, dict[str, int]] = {
    Quantity.VOLTAGE_MV: {"V": 1000, "mV": 1},
    Quantity.CURRENT_MA: {"A": 1000, "mA": 1},
    Quantity.POWER_MW: {"W": 1000, "kW": 1_000_000, "mW": 1},
    Quantity.ENERGY_MWH: {"Wh": 1000, "kWh": 1_000_000, "mWh": 1},
    Quantity.FREQUENCY_MHZ: {"Hz": 1000, "mHz": 1},
}


class Quality(StrEnum):
    GOOD = "good"
    ESTIMATED = "estimated"  # an upper bound, not a measurement: S0 power decaying between pulses
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one quantity from one source.

    `t_mono_ns` is `time.monotonic_ns()` of the moment the value was true (for an S0 edge: the edge's own kernel
    timestamp, not when Python saw it); `t_wall` is the wall clock at that moment and `wall_synced` whether the
    wall clock was synchronised then. `boot_id` ties the monotonic stamp to one boot. `signal` names the signal for
    `Quantity.SIGNAL` readings (e.g. "heater"), and may name a channel/phase for the others ("" = the total).
    """

    source: str
    t_mono_ns: int
    t_wall: float
    boot_id: str
    quantity: Quantity
    value: int | str
    quality: Quality = Quality.GOOD
    wall_synced: bool = True
    signal: str = ""


def to_milli(value: float | int | str | Decimal, scale: int = 1000) -> int:
    """Convert a device value in base units (W, kWh*1000=Wh...) to integer milli-units, half-even, exactly once.

    Goes through `Decimal(str(value))` so that a float32 register like 12.3 becomes 12300, not 12299.999...
    Raises ValueError for NaN or infinity: a caller must count and drop such readings, never bill them.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    d = Decimal(str(value)) * scale
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return int(d.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
