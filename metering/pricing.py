"""`Pricing`: the `Policy` the meter calls — current tariffs, the entitlement book, and the one rounding rule.

**The rounding rule.** Each record's exact cost (a fraction of a minor unit, `Tariff.exact_cost`) is added to a
running exact total kept per `appliance/function/currency/exponent`; the record's `cost_minor` is the round-half-even
of the new total minus the round-half-even of the old one. So every record is within one minor unit of its exact
cost, nothing is lost or invented by rounding, and for any appliance and function the costs of its records sum to
its exact total rounded half-even, at every moment. The running totals are part of the snapshot, so a restart
continues them exactly. Tariffs apply to records priced after they were applied; each record says which it got.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from .entitlement import ApplyResult, Entitlement, Entitlements
from .errors import TariffError
from .policy import Decision
from .records import UsageRecord
from .tariff import Tariff

SNAPSHOT_FORMAT = 1

__all__ = ["SNAPSHOT_FORMAT", "ApplyResult", "Pricing", "cost_key"]


def cost_key(record: UsageRecord, tariff: Tariff) -> str:
    """The running total a record's rounding belongs to."""
    return f"{record.appliance}/{record.function}/{tariff.currency}/{tariff.exponent}"


class Pricing:
    """Implements `metering.policy.Policy`. Pure: no clock, no I/O; the gateway persists `snapshot()`.

    A tariff whose `appliances` names an appliance prices it; otherwise the gateway-wide default (a tariff with no
    `appliances`) does; with several candidates the one applied last wins. No tariff: records are stamped with no
    tariff and cost nothing (`currency` empty), never refused.
    """

    def __init__(
        self,
        *,
        tz: str | tzinfo = "UTC",
        tariffs: Iterable[Tariff] = (),
        entitlements: Iterable[Entitlement] = (),
        gated: Iterable[str] = (),
    ) -> None:
        self.tz: tzinfo = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.entitlements = Entitlements(entitlements, gated=gated)
        self._tariffs: dict[str, Tariff] = {}  # in the order applied (a re-applied id moves to the end)
        self._totals: dict[str, Fraction] = {}
        for tariff in tariffs:
            self.apply_tariff(tariff)

    # ------------------------------------------------------------------------------------------- downlink

    def apply_tariff(self, tariff: Tariff) -> ApplyResult:
        """Per tariff id: a higher version replaces, the same one again is a duplicate, anything else is stale."""
        current = self._tariffs.get(tariff.id)
        if current is not None:
            if tariff.version < current.version:
                return ApplyResult("stale", f"tariff {tariff.id} version {tariff.version} < current {current.version}")
            if tariff.version == current.version:
                if tariff == current:
                    return ApplyResult("duplicate", f"tariff {tariff.id} version {tariff.version} already applied")
                return ApplyResult("stale", f"tariff {tariff.id} version {tariff.version} already applied "
                                            "with different content")
            del self._tariffs[tariff.id]
        self._tariffs[tariff.id] = tariff
        return ApplyResult("applied", f"tariff {tariff.id} version {tariff.version}")

    def apply_entitlement(self, ent: Entitlement) -> ApplyResult:
        return self.entitlements.apply(ent)

    # -------------------------------------------------------------------------------------------- queries

    @property
    def tariffs(self) -> tuple[Tariff, ...]:
        return tuple(self._tariffs.values())

    def currency_exponents(self) -> dict[str, int]:
        """Each priced currency's minor-unit exponent, as its tariffs say (koto.money shows costs with it)."""
        return {t.currency: t.exponent for t in self._tariffs.values()}

    def tariff_for(self, appliance: str) -> Tariff | None:
        ordered = list(self._tariffs.values())[::-1]
        for tariff in ordered:
            if appliance in tariff.appliances:
                return tariff
        return next((t for t in ordered if not t.appliances), None)

    def exact_cost(self, record: UsageRecord) -> Fraction:
        """The record's unrounded cost in minor units under the tariff that would price it now (0 if none)."""
        tariff = self.tariff_for(record.appliance)
        return Fraction(0) if tariff is None else tariff.exact_cost(record, self.tz)

    def total(self, key: str) -> Fraction:
        """The exact running total (minor units) for a `cost_key`."""
        return self._totals.get(key, Fraction(0))

    # -------------------------------------------------------------------------------------------- Policy

    def price(self, record: UsageRecord) -> None:
        """Stamp tariff, cost and entitlement on `record` and count its consumption. Call exactly once per record."""
        self.entitlements.charge(record)
        tariff = self.tariff_for(record.appliance)
        if tariff is None:
            record.tariff_id, record.tariff_version, record.currency, record.cost_minor = "", 0, "", 0
            return
        record.tariff_id, record.tariff_version, record.currency = tariff.id, tariff.version, tariff.currency
        exact = tariff.exact_cost(record, self.tz)
        if exact == 0:
            record.cost_minor = 0
            return
        key = cost_key(record, tariff)
        before = self._totals.get(key, Fraction(0))
        after = before + exact
        self._totals[key] = after
        record.cost_minor = round(after) - round(before)

    def allows(self, appliance: str, function: str, t_wall: float) -> Decision:
        return self.entitlements.check(appliance, function, t_wall)

    def snapshot(self) -> dict[str, Any]:
        """Strings and integers only (canonical-JSON-able), for the ledger's checkpoint with the records."""
        return {
            "format": SNAPSHOT_FORMAT,
            "tariffs": [t.to_dict() for t in self._tariffs.values()],
            "totals": {k: f"{v.numerator}/{v.denominator}" for k, v in sorted(self._totals.items())},
            **self.entitlements.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace tariffs, entitlements, consumption and running totals with a snapshot's (tz and gating stay)."""
        if state.get("format") != SNAPSHOT_FORMAT:
            raise TariffError("snapshot", "format", f"{state.get('format')!r} is not allowed; {SNAPSHOT_FORMAT}")
        tariffs = [Tariff.from_dict(t, file=f"snapshot tariffs[{i}]") for i, t in enumerate(state.get("tariffs", []))]
        totals = {str(k): Fraction(str(v)) for k, v in state.get("totals", {}).items()}
        self.entitlements.restore(state)
        self._tariffs = {t.id: t for t in tariffs}
        self._totals = totals
