"""What the meter writes: usage records (partition and summary kinds) and the drafts the ledger appends.

Partition kinds (`function`, `interim`, `gap`) together cover each source's energy and time exactly once; the summary
kind `cycle` restates a finished use and carries its total as `cycle_energy_mwh`, never `energy_mwh`, so a sum of
`energy_mwh` over all records never counts anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

USAGE_TYPE = "io.koto.usage.v1"
CLOCK_TYPE = "io.koto.clock.v1"
LIFECYCLE_TYPE = "io.koto.lifecycle.v1"


class RecordKind(StrEnum):
    FUNCTION = "function"
    INTERIM = "interim"
    GAP = "gap"
    CYCLE = "cycle"


PARTITION_KINDS = frozenset({RecordKind.FUNCTION, RecordKind.INTERIM, RecordKind.GAP})


class GapReason(StrEnum):
    """Why a `gap` record holds energy nobody watched being used (billed to no function, never dropped). This is the
    one list: the contract (docs/contract.md, docs/asyncapi.yaml, cloud/schemas/event-usage.json) repeats it, and a
    test ties them together."""

    RESTART = "restart"  # after a clean stop, or from a checkpoint with the next reading in a new boot / after max_gap
    REBOOT = "reboot"  # readings resumed in a new boot
    MAX_GAP = "max_gap"  # two readings of the source further apart than its max_gap_s
    STALE = "stale"  # no reading for max_gap_s while the gateway ran: metering paused until the source came back
    IMPLAUSIBLE = "implausible"  # a register rise beyond what the profile's max power could use in the time
    UNATTRIBUTED = "unattributed"  # energy with no segment to attribute it to (not expected to occur; never dropped)


class TimeStatus(StrEnum):
    SYNCED = "S"
    UNSYNCED = "U"


@dataclass(slots=True)
class UsageRecord:
    """One billable fact. Integers in milli-units; times as monotonic ns (durations) and wall seconds (placement).

    `time_status` is `U` when the wall clock was not synchronised at either end of the interval. For a `cycle`
    record, `first_seq`/`last_seq` are filled in by the ledger from `cycle_id` at append time (the meter does not
    know sequence numbers).
    """

    kind: RecordKind
    appliance: str
    source: str
    function: str
    t_start_mono_ns: int
    t_end_mono_ns: int
    t_start_wall: float
    t_end_wall: float
    boot_id: str
    time_status: TimeStatus = TimeStatus.SYNCED
    energy_mwh: int = 0
    duration_ms: int = 0
    cycle_id: str = ""
    uses: int = 0
    register_start_mwh: int | None = None
    register_end_mwh: int | None = None
    peak_power_mw: int = 0
    cycle_energy_mwh: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    tariff_id: str = ""
    tariff_version: int = 0
    currency: str = ""
    cost_minor: int = 0
    entitlement_id: str = ""
    entitled: str = ""  # "yes", "no" (recorded and flagged, never silently billed or dropped), "" = not gated
    reason: GapReason | Literal[""] = ""  # gap records only
    extra: dict[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        """The record's fields as canonical-JSON-ready data (strings and integers only; absent = omitted)."""
        d: dict[str, Any] = {
            "kind": str(self.kind),
            "appliance": self.appliance,
            "source": self.source,
            "function": self.function,
            # Microseconds: nanoseconds since boot pass 2**53 (the canonical integer limit) after 104 days of uptime.
            "start_mono_us": self.t_start_mono_ns // 1000,
            "end_mono_us": self.t_end_mono_ns // 1000,
            "start": _iso(self.t_start_wall),
            "end": _iso(self.t_end_wall),
            "boot_id": self.boot_id,
            "timestatus": str(self.time_status),
            "energy_mwh": self.energy_mwh,
            "duration_ms": self.duration_ms,
            "uses": self.uses,
            "peak_power_mw": self.peak_power_mw,
        }
        optional: dict[str, Any] = {
            "cycle_id": self.cycle_id,
            "register_start_mwh": self.register_start_mwh,
            "register_end_mwh": self.register_end_mwh,
            "cycle_energy_mwh": self.cycle_energy_mwh,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "tariff_id": self.tariff_id,
            "tariff_version": self.tariff_version or None,
            "currency": self.currency,
            "entitlement_id": self.entitlement_id,
            "entitled": self.entitled,
            "reason": str(self.reason),
        }
        for k, v in optional.items():
            if v is not None and v != "":
                d[k] = v
        if self.currency:
            d["cost_minor"] = self.cost_minor
        d.update(self.extra)
        return d


@dataclass(frozen=True, slots=True)
class Draft:
    """A record as the ledger receives it, before it has a seq, a prevhash or a signature.

    `type` is one of the three CloudEvent types; `subject` the billing subject (the appliance's, or the gateway's own
    for records that belong to no appliance); `time` the end of the interval (wall seconds); `data` the record's
    fields (strings and integers only). The ledger adds `epoch` and `seq` to `data`.
    """

    type: str
    subject: str
    time: float
    time_status: TimeStatus
    data: dict[str, Any]
    cycle_id: str = ""


def usage_draft(record: UsageRecord, subject: str) -> Draft:
    return Draft(USAGE_TYPE, subject, record.t_end_wall, record.time_status, record.data(), record.cycle_id)


def _iso(t: float) -> str:
    from koto.canonical import rfc3339

    return rfc3339(t)
