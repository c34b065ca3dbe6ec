"""Record builders shared by the tariff, entitlement and pricing tests."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from metering.records import RecordKind, UsageRecord

BERLIN = ZoneInfo("Europe/Berlin")


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    """Wall seconds of a local time in `tz` (fold=1 picks the second of a repeated hour)."""
    return datetime(y, mo, d, h, mi, s, tzinfo=tz, fold=fold).timestamp()


def record(
    kind: RecordKind | str,
    start: float,
    end: float,
    *,
    appliance: str = "washer",
    function: str = "heat",
    energy_mwh: int = 0,
    duration_ms: int | None = None,
    uses: int = 0,
    cycle_id: str = "",
) -> UsageRecord:
    kind = RecordKind(kind)
    return UsageRecord(
        kind=kind,
        appliance=appliance,
        source="washer-plug",
        function="" if kind == RecordKind.GAP else function,  # a cycle keeps what it is given ("" from the meter)
        t_start_mono_ns=0,
        t_end_mono_ns=round((end - start) * 1e9),
        t_start_wall=start,
        t_end_wall=end,
        boot_id="boot",
        energy_mwh=0 if kind == RecordKind.CYCLE else energy_mwh,
        duration_ms=round((end - start) * 1000) if duration_ms is None else duration_ms,
        uses=uses,
        cycle_id=cycle_id,
        cycle_energy_mwh=energy_mwh if kind == RecordKind.CYCLE else None,
    )
