"""What a meter step returns: events for people, items for the ledger (usage records and lifecycle notes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from koto.clock import Now

from ..policy import Decision
from ..records import LIFECYCLE_TYPE, Draft, TimeStatus, UsageRecord, usage_draft


@dataclass(frozen=True, slots=True)
class LifecycleNote:
    """Something that happened to a source that a bill reader must be told (register reset, wrap, swap...), `at` the
    reading that showed it."""

    event: str
    source: str
    at: Now
    details: dict[str, str | int] = field(default_factory=dict)

    def draft(self, subject: str, appliance: str) -> Draft:
        status = TimeStatus.SYNCED if self.at.synced else TimeStatus.UNSYNCED
        data: dict[str, Any] = {"event": self.event, "appliance": appliance, "source": self.source,
                                "boot_id": self.at.boot_id, "mono_us": self.at.mono_ns // 1000,
                                "timestatus": str(status)}
        for k, v in self.details.items():
            data.setdefault(k, v)
        return Draft(LIFECYCLE_TYPE, subject, self.at.wall, status, data)


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """A human-meaningful event: function_started, function_ended, cycle_started, cycle_ended, rejected, gap,
    source_stale, register_reset, register_wrap, meter_swap, implausible_jump. `message` is plain words."""

    kind: str
    appliance: str
    function: str
    power_mw: int
    t_wall: float
    message: str
    decision: Decision | None = None


Item = UsageRecord | LifecycleNote


@dataclass(frozen=True, slots=True)
class FeedResult:
    events: tuple[MeterEvent, ...] = ()
    items: tuple[Item, ...] = ()
    appliance: str = ""

    @property
    def records(self) -> list[UsageRecord]:
        return [i for i in self.items if isinstance(i, UsageRecord)]

    @property
    def notes(self) -> list[LifecycleNote]:
        return [i for i in self.items if isinstance(i, LifecycleNote)]

    def drafts(self, subject: str) -> list[Draft]:
        """The items as ledger drafts, in order (usage records and lifecycle notes)."""
        return [usage_draft(i, subject) if isinstance(i, UsageRecord) else i.draft(subject, self.appliance)
                for i in self.items]

    def __bool__(self) -> bool:
        return bool(self.events or self.items)


EMPTY = FeedResult()


def clock_time(wall: float) -> str:
    """A wall-clock moment for a message, in the gateway's local time: "10:02:03"."""
    return time.strftime("%H:%M:%S", time.localtime(wall))


def watts(mw: float) -> str:
    """Power for a message: "2100 W", "1.5 W"."""
    return f"{mw / 1000:.0f} W" if mw >= 10_000 else f"{mw / 1000:.1f} W"
