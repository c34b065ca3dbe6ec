"""The seam between the meter and pricing: what the meter asks of tariffs and entitlements.

The meter calls `price` on every record it emits (filling tariff, cost and entitlement fields) and `allows` when a
function starts (so the gateway can refuse to *start* an unentitled function; it never cuts a running one). A policy
keeps consumption state (uses and kWh drawn against entitlements), so it snapshots and restores like a meter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .records import UsageRecord


@dataclass(frozen=True, slots=True)
class Decision:
    entitled: bool
    entitlement_id: str = ""
    gated: bool = True  # False when no entitlement governs this function (free to use, billed by tariff)
    reason: str = ""


class Policy(Protocol):
    def price(self, record: UsageRecord) -> None:
        """Fill `tariff_id`, `tariff_version`, `currency`, `cost_minor`, `entitlement_id`, `entitled` in place."""

    def allows(self, appliance: str, function: str, t_wall: float) -> Decision: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...
