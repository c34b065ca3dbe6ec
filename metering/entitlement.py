"""Entitlements: the right to use a function — for N uses, N kWh, or until a date — and the book that tracks them.

An entitlement *gates* access; it does not price it (the tariff does, always). The rules, in docs/pricing.md:
- **Gated or free.** A function is gated when any entitlement ever given names it (by name or `*`), whatever its
  state — an expired, used-up or revoked one keeps the function gated, so revoking never makes a function free —
  or when the gateway's config lists it in `gated`. A function nothing gates is free to use under the tariff.
- **Covered or not.** A record of a gated function is covered (`entitled="yes"`, `entitlement_id`) when some
  entitlement for it is in force at the record's *start*: not revoked, `valid_from <= t < valid_until`, and not used
  up; a `cycle` record by the decision made when its use started (its first partition record). Otherwise it is
  recorded and flagged `entitled="no"`: never dropped, never silently billed. The gateway may
  refuse to *start* a function (`check`) but never stops a running one, so the last covered record may take a kWh
  entitlement past its limit by at most that one record (at most `interim_s` of use).
- **Which one.** Among several in force: an exact function name before `*`, then the one ending soonest, then id.
- **Consumption.** Uses are counted from `cycle` records, mWh from partition records (`function`, `interim`), on the
  entitlement that covered them. A later version of the same id keeps the consumption (a top-up); a new id starts
  from zero. Offline nothing changes but time: grants hold until `valid_until`, and nothing is granted that was
  not given.
- **Versions.** Per id: a higher version replaces, the same version with the same content is a duplicate, anything
  else is stale and rejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from koto.canonical import parse_rfc3339, rfc3339

from .errors import EntitlementError
from .policy import Decision
from .records import PARTITION_KINDS, RecordKind, UsageRecord
from .tariff import MWH_PER_KWH, parse_match

ApplyStatus = Literal["applied", "duplicate", "stale"]
MAX_OPEN_CYCLES = 64  # uses whose start decision is remembered until their cycle record arrives
_KWH = re.compile(r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$")


class EntitlementKind(StrEnum):
    USES = "uses"  # `limit` uses (cycles)
    KWH = "kwh"  # `limit` mWh of energy
    UNTIL = "until"  # unlimited until `valid_until`


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a tariff or entitlement did; the downlink handler turns it into the command's reply."""

    status: ApplyStatus
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass(frozen=True, slots=True)
class Entitlement:
    """One grant (or, with `revoked`, its withdrawal). Times are wall seconds (UTC epoch); None = open-ended."""

    id: str
    appliance: str
    function: str = "*"
    kind: EntitlementKind = EntitlementKind.UNTIL
    limit: int = 0  # uses for USES, mWh for KWH, unused for UNTIL
    valid_from: int | None = None
    valid_until: int | None = None
    version: int = 1
    revoked: bool = False

    def names(self, appliance: str, function: str) -> bool:
        """True when this entitlement is about `appliance/function` (it gates it, whatever its state)."""
        return self.appliance == appliance and self.function in ("*", function)

    def in_time(self, t_wall: float) -> bool:
        return (self.valid_from is None or self.valid_from <= t_wall) and (
            self.valid_until is None or t_wall < self.valid_until
        )

    def to_dict(self) -> dict[str, Any]:
        """Strings and integers only: the downlink command body and the ledger's stored form."""
        d: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "action": "revoke" if self.revoked else "grant",
            "appliance": self.appliance,
            "function": self.function,
            "kind": str(self.kind),
        }
        if self.kind == EntitlementKind.USES:
            d["limit"] = self.limit
        elif self.kind == EntitlementKind.KWH:
            d["limit"] = _kwh_text(self.limit)
        if self.valid_from is not None:
            d["valid_from"] = rfc3339(self.valid_from)
        if self.valid_until is not None:
            d["valid_until"] = rfc3339(self.valid_until)
        return d

    @classmethod
    def from_dict(cls, d: Any, *, file: str = "entitlement") -> Entitlement:
        """Validate strictly; any problem raises `EntitlementError` naming `file`, the key and what is allowed.

        A grant needs `id`, `version`, `appliance`, `kind` and, for `uses`, an integer `limit`; for `kwh`, `limit` in
        kWh as a decimal string (at most 6 decimals, i.e. whole mWh) or an integer; for `until`, `valid_until`. A
        revoke (`"action": "revoke"`) needs only `id` and `version`.
        """

        def fail(key: str, problem: str) -> EntitlementError:
            return EntitlementError(file, key, problem)

        if not isinstance(d, dict):
            raise fail("$", "must be an object")
        allowed = ("id", "version", "action", "appliance", "function", "kind", "limit", "valid_from", "valid_until")
        for k in d:
            if k not in allowed:
                raise fail(str(k), f"unknown key; allowed: {', '.join(allowed)}")
        action = d.get("action", "grant")
        if action not in ("grant", "revoke"):
            raise fail("action", f"{action!r} is not allowed; grant or revoke")
        revoked = action == "revoke"
        for k in ("id", "version") if revoked else ("id", "version", "appliance", "kind"):
            if k not in d:
                raise fail(k, "is required")
        ent_id, version, appliance, function = _identity(d, revoked, fail)
        kind, limit = _kind_and_limit(d, revoked, fail)
        valid_from = _time(d.get("valid_from"), "valid_from", fail)
        valid_until = _time(d.get("valid_until"), "valid_until", fail)
        if kind == EntitlementKind.UNTIL and valid_until is None and not revoked:
            raise fail("valid_until", "is required for kind until")
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            raise fail("valid_until", "must be after valid_from")
        return cls(ent_id, appliance, function, kind, limit, valid_from, valid_until, version, revoked)


@dataclass(slots=True)
class Consumption:
    """What has been drawn against one entitlement."""

    uses: int = 0
    mwh: int = 0


class Entitlements:
    """The gateway's entitlement book: grants, revocations, consumption, and the decision for each use.

    `gated` are the config's patterns (`washer/heat`, or `washer` for all its functions) that are gated even before
    any entitlement names them: a function listed there and granted nothing is flagged `entitled="no"`.
    """

    def __init__(self, entitlements: Iterable[Entitlement] = (), *, gated: Iterable[str] = ()) -> None:
        self.gated = frozenset(_pattern(g) for g in gated)
        self._book: dict[str, Entitlement] = {}
        self._used: dict[str, Consumption] = {}
        self._started: dict[str, Decision] = {}  # cycle_id -> the decision made when that use started
        for ent in entitlements:
            self.apply(ent)

    # --------------------------------------------------------------------------------------------- changes

    def apply(self, ent: Entitlement) -> ApplyResult:
        """Grant or revoke by version: higher replaces; same content again is a duplicate; anything else is stale.

        A revoke keeps the identity of what it revokes (so the function stays gated) and its consumption.
        """
        current = self._book.get(ent.id)
        if current is not None:
            if ent.version < current.version:
                return ApplyResult("stale", f"entitlement {ent.id} version {ent.version} < current {current.version}")
            if ent.version == current.version:
                if ent == current or (ent.revoked and current.revoked):
                    return ApplyResult("duplicate", f"entitlement {ent.id} version {ent.version} already applied")
                return ApplyResult("stale", f"entitlement {ent.id} version {ent.version} already applied "
                                            "with different content")
            if ent.revoked and not ent.appliance:
                ent = replace(current, version=ent.version, revoked=True)
        self._book[ent.id] = ent
        self._used.setdefault(ent.id, Consumption())
        return ApplyResult("applied", "revoked" if ent.revoked else "granted")

    def grant(self, ent: Entitlement) -> ApplyResult:
        return self.apply(replace(ent, revoked=False))

    def revoke(self, ent_id: str, version: int) -> ApplyResult:
        current = self._book.get(ent_id)
        ent = replace(current, version=version, revoked=True) if current else Entitlement(ent_id, "", version=version,
                                                                                          revoked=True)
        return self.apply(ent)

    # --------------------------------------------------------------------------------------------- queries

    def __iter__(self) -> Iterator[Entitlement]:
        return iter(list(self._book.values()))

    def __len__(self) -> int:
        return len(self._book)

    def get(self, ent_id: str) -> Entitlement | None:
        return self._book.get(ent_id)

    def consumption(self, ent_id: str) -> Consumption:
        used = self._used.get(ent_id, Consumption())
        return Consumption(used.uses, used.mwh)

    def remaining(self, ent_id: str) -> int | None:
        """Uses or mWh left (never negative); None for an `until` entitlement or an unknown id."""
        ent = self._book.get(ent_id)
        if ent is None or ent.kind == EntitlementKind.UNTIL:
            return None
        used = self._used.get(ent_id, Consumption())
        return max(ent.limit - (used.uses if ent.kind == EntitlementKind.USES else used.mwh), 0)

    def in_force(self, t_wall: float) -> list[dict[str, Any]]:
        """The entitlements neither revoked nor expired at `t_wall`, each with what is left of it: what the status
        file and the household page show."""
        return [{"id": e.id, "appliance": e.appliance, "function": e.function, "kind": str(e.kind),
                 "remaining": self.remaining(e.id), "valid_until": e.valid_until}
                for e in self._book.values()
                if not e.revoked and (e.valid_until is None or e.valid_until > t_wall)]

    def is_gated(self, appliance: str, function: str) -> bool:
        if f"{appliance}/{function}" in self.gated or f"{appliance}/*" in self.gated:
            return True
        return any(e.names(appliance, function) for e in self._book.values())

    def check(self, appliance: str, function: str, t_wall: float) -> Decision:
        """May `appliance/function` be used at `t_wall`? Pure: consumes nothing."""
        named = [e for e in self._book.values() if e.names(appliance, function)]
        if not named and not self.is_gated(appliance, function):
            return Decision(entitled=True, gated=False, reason="not gated")
        usable = [e for e in named if not e.revoked and e.in_time(t_wall) and self._left(e)]
        if usable:
            best = min(usable, key=lambda e: (e.function == "*", e.valid_until is None, e.valid_until or 0, e.id))
            return Decision(entitled=True, entitlement_id=best.id, gated=True)
        return Decision(entitled=False, gated=True, reason=self._why_not(named, t_wall))

    def charge(self, record: UsageRecord) -> Decision:
        """Decide a record's coverage, flag it, and count what it draws. Call exactly once per record.

        A partition record is judged at its own start. A `cycle` record is judged as of the start of its use: it
        takes the decision made for the first partition record with its `cycle_id` (so a use that began covered
        stays covered, and one that began uncovered stays flagged), or, if none was seen, is judged at its start
        (a cycle with no function, as the meter writes them, is governed only by `appliance/*` entitlements).
        """
        if record.kind == RecordKind.GAP or (not record.function and record.kind != RecordKind.CYCLE):
            record.entitled, record.entitlement_id = "", ""
            return Decision(entitled=True, gated=False, reason="no function")
        decision = self._started.pop(record.cycle_id, None) if record.kind == RecordKind.CYCLE else None
        if decision is None:
            decision = self.check(record.appliance, record.function, record.t_start_wall)
        if record.kind != RecordKind.CYCLE and record.cycle_id and record.cycle_id not in self._started:
            self._started[record.cycle_id] = decision
            while len(self._started) > MAX_OPEN_CYCLES:
                del self._started[next(iter(self._started))]
        if not decision.gated:
            record.entitled, record.entitlement_id = "", ""
        elif decision.entitled:
            record.entitled, record.entitlement_id = "yes", decision.entitlement_id
            used = self._used.setdefault(decision.entitlement_id, Consumption())
            if record.kind == RecordKind.CYCLE:
                used.uses += record.uses
            elif record.kind in PARTITION_KINDS:
                used.mwh += record.energy_mwh
        else:
            record.entitled, record.entitlement_id = "no", ""
        return decision

    # -------------------------------------------------------------------------------------------- snapshot

    def snapshot(self) -> dict[str, Any]:
        return {
            "entitlements": [e.to_dict() for e in self._book.values()],
            "used": {k: {"uses": v.uses, "mwh": v.mwh} for k, v in self._used.items()},
            "open_cycles": {
                k: {"entitled": int(d.entitled), "entitlement_id": d.entitlement_id, "gated": int(d.gated),
                    "reason": d.reason}
                for k, d in self._started.items()
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the book with a snapshot's (the config's `gated` patterns stay)."""
        book = {}
        for i, raw in enumerate(state.get("entitlements", [])):
            ent = Entitlement.from_dict(raw, file=f"snapshot entitlements[{i}]")
            book[ent.id] = ent
        used = {str(k): Consumption(int(v["uses"]), int(v["mwh"])) for k, v in state.get("used", {}).items()}
        started = {
            str(k): Decision(bool(v["entitled"]), str(v["entitlement_id"]), bool(v["gated"]), str(v["reason"]))
            for k, v in state.get("open_cycles", {}).items()
        }
        self._book, self._used, self._started = book, used, started

    # ------------------------------------------------------------------------------------------- internals

    def _left(self, ent: Entitlement) -> bool:
        used = self._used.get(ent.id, Consumption())
        if ent.kind == EntitlementKind.USES:
            return used.uses < ent.limit
        if ent.kind == EntitlementKind.KWH:
            return used.mwh < ent.limit
        return True

    def _why_not(self, named: list[Entitlement], t_wall: float) -> str:
        if not named:
            return "gated by config and no entitlement given"
        reasons = []
        for e in sorted(named, key=lambda e: e.id):
            if e.revoked:
                why = "revoked"
            elif e.valid_from is not None and t_wall < e.valid_from:
                why = "not yet valid"
            elif not e.in_time(t_wall):
                why = "expired"
            else:
                why = "used up"
            reasons.append(f"{e.id} {why}")
        return "; ".join(reasons)


def _kwh_text(mwh: int) -> str:
    whole, frac = divmod(mwh, MWH_PER_KWH)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


_Fail = Callable[[str, str], EntitlementError]


def _identity(d: dict[str, Any], revoked: bool, fail: _Fail) -> tuple[str, int, str, str]:
    """What an entitlement is about: (id, version, appliance, function); a revoke may leave the appliance out."""
    ent_id = d["id"]
    if not isinstance(ent_id, str) or not ent_id or ent_id != ent_id.strip():
        raise fail("id", f"{ent_id!r} is not allowed; a non-empty string")
    version = d["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise fail("version", f"{version!r} is not allowed; an integer >= 1")
    appliance = d.get("appliance", "")
    if not isinstance(appliance, str) or "/" in appliance or appliance == "*" or (not appliance and not revoked):
        raise fail("appliance", f"{appliance!r} is not allowed; an appliance name (no '/', not '*')")
    function = d.get("function", "*")
    if not isinstance(function, str) or not function or "/" in function or function != function.strip():
        raise fail("function", f"{function!r} is not allowed; a function name or '*' for all")
    return ent_id, version, appliance, function


def _kind_and_limit(d: dict[str, Any], revoked: bool, fail: _Fail) -> tuple[EntitlementKind, int]:
    """The kind and its limit: uses (an integer), mWh (from kWh, a decimal string or an integer), or none (until)."""
    kind_raw = d.get("kind", "until")
    try:
        kind = EntitlementKind(kind_raw)
    except ValueError as exc:
        raise fail("kind", f"{kind_raw!r} is not allowed; uses, kwh or until") from exc
    raw = d.get("limit")
    if raw is None and (revoked or kind == EntitlementKind.UNTIL):
        return kind, 0
    if kind == EntitlementKind.USES:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise fail("limit", f"{raw!r} is not allowed; for kind uses, an integer number of uses >= 1")
        return kind, raw
    if kind == EntitlementKind.KWH:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return kind, raw * MWH_PER_KWH
        if isinstance(raw, str) and _KWH.match(raw) and Decimal(raw) > 0:
            return kind, int(Decimal(raw) * MWH_PER_KWH)
        raise fail("limit", f"{raw!r} is not allowed; for kind kwh, kWh > 0 as a decimal string such as \"12.5\" "
                            "(at most 6 decimals) or an integer")
    raise fail("limit", "is not allowed for kind until; valid_until is the limit")


def _time(v: Any, key: str, fail: _Fail) -> int | None:
    """RFC 3339 text or integer epoch seconds -> whole epoch seconds (rounded down)."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, str):
        try:
            return math.floor(parse_rfc3339(v))
        except ValueError:
            pass
    raise fail(key, f"{v!r} is not allowed; an RFC 3339 time such as 2026-01-31T23:00:00Z")


def _pattern(text: str) -> str:
    try:
        return parse_match(text)
    except ValueError as exc:
        raise EntitlementError("config", "gated", str(exc)) from exc
