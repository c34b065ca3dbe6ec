"""Entitlements: uses / kWh / until, revocation, version rules, and flagging of unentitled use."""

from __future__ import annotations

from typing import Any

import pytest

from koto.canonical import canonical_bytes, rfc3339
from metering.entitlement import Entitlement, EntitlementKind, Entitlements
from metering.errors import EntitlementError
from metering.records import UsageRecord
from tests.support.records import at, record

T0 = at(2026, 1, 10, 12)
MIN = 60.0


def ent(**over: Any) -> Entitlement:
    d: dict[str, Any] = {"id": "e1", "version": 1, "appliance": "washer", "function": "*", "kind": "uses", "limit": 2}
    d.update(over)
    return Entitlement.from_dict(d, file="cmd")


def use(book: Entitlements, start: float, *, function: str = "wash", mwh: int = 100_000) -> list[UsageRecord]:
    """One washer use as the meter reports it: two partition slices, then the cycle record."""
    c = f"c{start}"
    recs = [
        record("interim", start, start + 15 * MIN, function=function, energy_mwh=mwh, cycle_id=c),
        record("function", start + 15 * MIN, start + 20 * MIN, function=function, energy_mwh=mwh, cycle_id=c),
        record("cycle", start, start + 20 * MIN, function=function, uses=1, energy_mwh=2 * mwh, cycle_id=c),
    ]
    for r in recs:
        book.charge(r)
    return recs


# ---------------------------------------------------------------------------------------------- dict form


def test_dict_form_round_trips_with_kwh_in_decimal_and_storage_in_mwh() -> None:
    e = ent(kind="kwh", limit="12.5", valid_from="2026-01-01T00:00:00Z", valid_until="2026-02-01T00:00:00Z")
    assert e.limit == 12_500_000
    assert e.kind == EntitlementKind.KWH
    d = e.to_dict()
    canonical_bytes(d)
    assert d["limit"] == "12.5"
    assert Entitlement.from_dict(d) == e


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"kind": "hours"}, "kind"),
        ({"limit": 0}, "limit"),
        ({"limit": "2"}, "limit"),
        ({"kind": "kwh", "limit": 1.5}, "limit"),
        ({"kind": "kwh", "limit": "0.0000001"}, "limit"),
        ({"kind": "until", "limit": None}, "valid_until"),
        ({"appliance": "*"}, "appliance"),
        ({"function": "a/b"}, "function"),
        ({"version": 0}, "version"),
        ({"valid_from": "yesterday"}, "valid_from"),
        ({"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"}, "valid_until"),
        ({"action": "pause"}, "action"),
        ({"price": "1"}, "price"),
    ],
)
def test_bad_entitlements_are_refused_naming_the_key(change: dict[str, Any], key: str) -> None:
    d: dict[str, Any] = {"id": "e1", "version": 1, "appliance": "washer", "kind": "uses", "limit": 2}
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(EntitlementError) as err:
        Entitlement.from_dict(d, file="cmd")
    assert (err.value.file, err.value.key) == ("cmd", key)


def test_a_revoke_needs_only_id_and_version() -> None:
    e = Entitlement.from_dict({"id": "e1", "version": 2, "action": "revoke"})
    assert e.revoked and e.version == 2


# ------------------------------------------------------------------------------------------------ gating


def test_a_function_no_entitlement_names_is_free_and_not_flagged() -> None:
    book = Entitlements([ent(function="heat")])
    decision = book.check("washer", "spin", T0)
    assert (decision.entitled, decision.gated) == (True, False)
    r = record("function", T0, T0 + MIN, function="spin", energy_mwh=5)
    book.charge(r)
    assert (r.entitled, r.entitlement_id) == ("", "")
    assert book.check("kettle", "boil", T0).gated is False


def test_config_gating_without_any_grant_flags_use_as_unentitled() -> None:
    book = Entitlements(gated=["washer"])
    decision = book.check("washer", "spin", T0)
    assert (decision.entitled, decision.gated) == (False, True)
    r = record("function", T0, T0 + MIN, function="spin", energy_mwh=5)
    book.charge(r)
    assert (r.entitled, r.entitlement_id) == ("no", "")
    assert book.check("kettle", "boil", T0).gated is False


def test_gap_records_are_never_gated_or_counted() -> None:
    book = Entitlements([ent(kind="kwh", limit=1)])
    r = record("gap", T0, T0 + MIN, energy_mwh=5_000_000)
    book.charge(r)
    assert r.entitled == ""
    assert book.consumption("e1").mwh == 0


# -------------------------------------------------------------------------------------------------- kinds


def test_uses_are_counted_on_cycles_and_the_third_use_of_two_is_flagged() -> None:
    book = Entitlements([ent(limit=2)])
    for n in range(2):
        assert book.check("washer", "wash", T0).entitled
        recs = use(book, T0 + n * 3600)
        assert [(r.entitled, r.entitlement_id) for r in recs] == [("yes", "e1")] * 3
    assert book.consumption("e1").uses == 2
    assert book.remaining("e1") == 0
    decision = book.check("washer", "wash", T0 + 3 * 3600)
    assert (decision.entitled, decision.gated) == (False, True)
    assert "used up" in decision.reason
    recs = use(book, T0 + 3 * 3600)  # the gateway could not stop it: recorded and flagged, never dropped
    assert [r.entitled for r in recs] == ["no"] * 3
    assert book.consumption("e1").uses == 2  # unentitled use is not drawn from the grant


def test_kwh_is_drawn_by_partition_records_and_may_overrun_by_one_record() -> None:
    book = Entitlements([ent(kind="kwh", limit="0.25")])  # 250_000 mWh
    recs = use(book, T0, mwh=150_000)  # 150 + 150: the second slice started with 100 Wh left
    assert [r.entitled for r in recs] == ["yes", "yes", "yes"]
    assert book.consumption("e1").mwh == 300_000  # the cycle record's energy is not counted again
    assert book.remaining("e1") == 0
    recs = use(book, T0 + 3600, mwh=1)
    assert [r.entitled for r in recs] == ["no"] * 3


def test_a_use_that_began_covered_stays_covered_and_one_that_began_flagged_stays_flagged() -> None:
    book = Entitlements([ent(kind="until", limit=None, valid_until=rfc3339(T0 + 10 * MIN))])
    recs = use(book, T0)  # the grant expires during the use: the second slice is flagged, the use is covered
    assert [r.entitled for r in recs] == ["yes", "no", "yes"]
    book = Entitlements(gated=["washer"])
    first = record("interim", T0, T0 + 15 * MIN, function="wash", energy_mwh=5, cycle_id="c")
    book.charge(first)
    book.apply(ent(kind="until", limit=None, valid_until=rfc3339(T0 + 3600)))  # granted while the unentitled use runs
    last = record("function", T0 + 15 * MIN, T0 + 20 * MIN, function="wash", energy_mwh=5, cycle_id="c")
    cycle = record("cycle", T0, T0 + 20 * MIN, function="wash", uses=1, cycle_id="c")
    book.charge(last)
    book.charge(cycle)
    assert [first.entitled, last.entitled, cycle.entitled] == ["no", "yes", "no"]


def test_a_cycle_without_a_function_follows_its_use_or_appliance_wide_grants() -> None:
    book = Entitlements([ent(function="wash", limit=1)])
    cycle = record("cycle", T0, T0 + MIN, function="", uses=1, cycle_id="c-other")  # as the meter writes them
    book.charge(cycle)  # no use start seen, and only appliance-wide grants govern a cycle with no function
    assert cycle.entitled == ""
    book = Entitlements([ent(limit=1)])
    c = "c1"
    first = record("interim", T0, T0 + MIN, function="wash", energy_mwh=1, cycle_id=c)
    cycle = record("cycle", T0, T0 + MIN, function="", uses=1, cycle_id=c)
    book.charge(first)
    book.charge(cycle)
    assert (first.entitled, cycle.entitled, book.consumption("e1").uses) == ("yes", "yes", 1)


def test_until_covers_records_that_start_inside_its_validity() -> None:
    book = Entitlements([ent(kind="until", limit=None, valid_from=rfc3339(T0), valid_until=rfc3339(T0 + 3600))])
    early = book.check("washer", "wash", T0 - 1)
    assert not early.entitled and "not yet valid" in early.reason
    assert book.check("washer", "wash", T0).entitled
    last = record("function", T0 + 3590, T0 + 3700, function="wash", energy_mwh=10)  # starts inside, ends after
    book.charge(last)
    assert last.entitled == "yes"
    late = book.check("washer", "wash", T0 + 3600)
    assert not late.entitled and "expired" in late.reason
    assert late.gated  # an expired grant keeps the function gated: nothing is granted that was not given


def test_an_exact_function_grant_is_used_before_a_wildcard_and_the_sooner_ending_first() -> None:
    book = Entitlements([
        ent(id="all", function="*", kind="until", limit=None, valid_until=rfc3339(T0 + 100)),
        ent(id="heat-later", function="heat", kind="until", limit=None, valid_until=rfc3339(T0 + 9000)),
        ent(id="heat-soon", function="heat", kind="until", limit=None, valid_until=rfc3339(T0 + 5000)),
    ])
    assert book.check("washer", "heat", T0).entitlement_id == "heat-soon"
    assert book.check("washer", "spin", T0).entitlement_id == "all"
    assert book.check("washer", "heat", T0 + 6000).entitlement_id == "heat-later"


# ------------------------------------------------------------------------------------- revoke and versions


def test_revocation_stops_coverage_keeps_the_function_gated_and_blocks_older_grants() -> None:
    book = Entitlements([ent()])
    use(book, T0)
    assert book.revoke("e1", 2).status == "applied"
    decision = book.check("washer", "wash", T0 + 3600)
    assert (decision.entitled, decision.gated, decision.reason) == (False, True, "e1 revoked")
    assert book.apply(ent(version=1)).status == "stale"
    assert book.apply(Entitlement.from_dict({"id": "e1", "version": 2, "action": "revoke"})).status == "duplicate"
    assert book.consumption("e1").uses == 1
    assert book.apply(ent(version=3, limit=5)).status == "applied"  # re-granted by a newer version
    assert book.check("washer", "wash", T0 + 3600).entitled


def test_a_revoke_for_an_unknown_id_is_kept_so_an_older_grant_cannot_arrive_later() -> None:
    book = Entitlements()
    assert book.apply(Entitlement.from_dict({"id": "e9", "version": 4, "action": "revoke"})).applied
    assert book.apply(ent(id="e9", version=3)).status == "stale"
    assert book.check("washer", "wash", T0).gated is False


def test_versions_stale_duplicate_conflict_and_top_up() -> None:
    book = Entitlements()
    assert book.apply(ent(version=2)).status == "applied"
    assert book.apply(ent(version=2)).status == "duplicate"
    assert book.apply(ent(version=1)).status == "stale"
    conflict = book.apply(ent(version=2, limit=9))
    assert conflict.status == "stale" and "different content" in conflict.reason
    use(book, T0)
    use(book, T0 + 3600)
    assert not book.check("washer", "wash", T0 + 7200).entitled
    assert book.apply(ent(version=3, limit=3)).applied  # a top-up keeps what was used
    assert book.consumption("e1").uses == 2
    assert book.remaining("e1") == 1
    assert book.check("washer", "wash", T0 + 7200).entitled


def test_snapshot_restores_grants_and_consumption_exactly() -> None:
    book = Entitlements([ent(), ent(id="k", kind="kwh", limit="1")], gated=["dryer"])
    use(book, T0)
    state = book.snapshot()
    canonical_bytes(state)
    again = Entitlements(gated=["dryer"])
    again.restore(state)
    assert list(again) == list(book)
    assert again.consumption("e1") == book.consumption("e1")
    assert again.snapshot() == state
    use(again, T0 + 3600)
    assert again.remaining("e1") == 0


def test_in_force_lists_what_is_neither_revoked_nor_expired_with_what_is_left() -> None:
    book = Entitlements()
    book.apply(ent(id="left", limit=2))
    book.apply(ent(id="gone", valid_until=rfc3339(T0 + 10 * MIN)))
    book.apply(ent(id="revoked"))
    book.revoke("revoked", 2)
    use(book, T0)  # charged to the grant that expires first
    assert [(e["id"], e["remaining"]) for e in book.in_force(T0 + 5 * MIN)] == [("left", 2), ("gone", 1)]
    assert [e["id"] for e in book.in_force(T0 + 10 * MIN)] == ["left"]
