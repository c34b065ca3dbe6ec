"""Drafts for ledger tests: realistic usage records and the odd lifecycle event."""

from __future__ import annotations

from typing import Any

from metering.records import LIFECYCLE_TYPE, Draft, RecordKind, TimeStatus, UsageRecord, usage_draft

T0 = 1_800_000_000.0  # 2027-01-15
SUBJECT = "urn:koto:subject:flat-7"


def usage(
    i: int,
    *,
    kind: RecordKind = RecordKind.FUNCTION,
    appliance: str = "washer",
    function: str = "wash",
    cycle_id: str = "",
    energy_mwh: int = 1000,
    t_end: float | None = None,
    cost_minor: int = 5,
    currency: str = "EUR",
    uses: int = 0,
    time_status: TimeStatus = TimeStatus.SYNCED,
    extra: dict[str, Any] | None = None,
) -> Draft:
    end = T0 + 60 * (i + 1) if t_end is None else t_end
    rec = UsageRecord(
        kind=kind,
        appliance=appliance,
        source=f"{appliance}.power",
        function=function,
        t_start_mono_ns=i * 60 * 10**9,
        t_end_mono_ns=(i + 1) * 60 * 10**9,
        t_start_wall=end - 60,
        t_end_wall=end,
        boot_id="boot-1",
        time_status=time_status,
        energy_mwh=energy_mwh if kind != RecordKind.CYCLE else 0,
        cycle_energy_mwh=energy_mwh if kind == RecordKind.CYCLE else None,
        duration_ms=60_000,
        cycle_id=cycle_id,
        uses=uses,
        currency=currency,
        cost_minor=cost_minor,
        extra=extra or {},
    )
    return usage_draft(rec, SUBJECT)


def lifecycle(event: str, t: float = T0) -> Draft:
    return Draft(LIFECYCLE_TYPE, "", t, TimeStatus.SYNCED, {"event": event, "detail": "ledger test"})


def batch(start: int, n: int) -> list[Draft]:
    return [usage(i, function=("fill", "wash", "spin")[i % 3]) for i in range(start, start + n)]
