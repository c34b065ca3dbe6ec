"""Which readings may reach a total, and in plain words why the others may not.

A refused reading never raises: the meter counts it under `Refusal.reason` in `meter.rejected` and reports a
`rejected` event with the words. A reading that is simply not for this meter (another channel of the source, a
diagnostic quantity such as voltage) is not refused but ignored, and only counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from koto.reading import Quantity, Reading

from ..energy import EnergySpec
from .results import watts

_POWER = Quantity.POWER_MW
_ENERGY = Quantity.ENERGY_MWH
_PULSES = Quantity.PULSES


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # the key counted in `meter.rejected`
    words: str


def refuse_power(r: Reading, source: str, max_mw: int) -> Refusal:
    """Why a power reading on a power source is refused (the caller found that it is: wrong source, not an integer,
    negative, or beyond 1.5 x the profile's maximum)."""
    v = r.value
    if r.source != source:
        return Refusal("wrong_source", f"reading from {r.source!r}, this meter's energy source is {source!r}")
    if isinstance(v, float) and not math.isfinite(v):
        return Refusal("not_a_number", "power is not a number")
    if type(v) is not int:
        return Refusal("not_integer", f"power must be an integer in mW, got {type(v).__name__}")
    if v < 0:
        return Refusal("negative", f"negative power ({v} mW)")
    return Refusal("beyond_max", f"power {watts(v)} is far beyond the profile's maximum {watts(max_mw)}")


def screen(r: Reading, spec: EnergySpec, reject_mw: int, max_mw: int) -> int | Refusal | None:
    """A reading for a register or pulse source: its value if it counts, why it is refused, or None when it is not
    for this meter (a diagnostic quantity, or another channel of the source) and is only to be counted as ignored."""
    q = r.quantity
    if q is not _POWER and q is not _ENERGY and q is not _PULSES:
        return None
    if r.source != spec.source:
        return Refusal("wrong_source", f"reading from {r.source!r}, this meter's energy source is {spec.source!r}")
    if r.signal != spec.channel:
        # A meter may report several channels (an SDM630's phases L1-L3 beside the total, an SDM120's import
        # register beside its total register): the meter takes exactly one, the configured channel.
        return None
    if (q is _ENERGY and spec.kind != "register") or (q is _PULSES and spec.kind != "pulses"):
        return Refusal("wrong_quantity", f"{q.value} reading on a {spec.kind} source")
    v = r.value
    if type(v) is not int:
        if isinstance(v, float) and not math.isfinite(v):
            return Refusal("not_a_number", f"{q.value} is not a number")
        return Refusal("not_integer", f"{q.value} must be an integer, got {type(v).__name__}")
    if v < 0:
        return Refusal("negative", f"negative {'register' if q is _ENERGY else q.value} ({v})")
    if q is _POWER and v > reject_mw:
        return Refusal("beyond_max", f"power {watts(v)} is far beyond the profile's maximum {watts(max_mw)}")
    return v
