"""The ledger: event format (the cloud contract), chaining, durable batched appends with checkpoints, acks, prune."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from koto.canonical import ZERO_HASH, canonical_bytes, rfc3339, sha256_hex
from koto.signing import PrivateKey, save_private_key, verify_bytes
from metering.errors import LedgerError
from metering.ledger import AckOutcome, Doc, Ledger, read_gateway_id
from metering.records import LIFECYCLE_TYPE, USAGE_TYPE, RecordKind, TimeStatus
from tests.support.drafts import SUBJECT, T0, batch, lifecycle, usage
from tests.support.paths import REPO

GW = "gw-test-1"
EPOCH = 1_790_000_000


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def open_ledger(db: Path, key: PrivateKey | None, **kw: object) -> Ledger:
    return Ledger.open(db, gateway_id=GW, key=key, epoch=kw.pop("epoch", EPOCH), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- event format


def test_a_record_is_the_cloudevent_of_the_contract_signed_and_canonical(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        (s,) = led.append([usage(0, function="spin", energy_mwh=4321, cycle_id="c-1")])
    ev = s.event()
    assert s.body == canonical_bytes(ev)
    sig = ev.pop("sig")
    unsigned = canonical_bytes(ev)
    assert s.hash == sha256_hex(unsigned)
    assert verify_bytes(key.public_key(), unsigned, sig)
    assert {k: v for k, v in ev.items() if k != "data"} == {
        "specversion": "1.0",
        "id": f"{EPOCH}-1",
        "source": f"urn:koto:gw:{GW}",
        "type": USAGE_TYPE,
        "subject": SUBJECT,
        "time": rfc3339(T0 + 60),
        "datacontenttype": "application/json",
        "sequence": "00000000000000000001",
        "timestatus": "S",
        "prevhash": ZERO_HASH,
    }
    data = ev["data"]
    assert (data["epoch"], data["seq"], data["kind"], data["function"]) == (EPOCH, 1, "function", "spin")
    assert (data["energy_mwh"], data["cycle_id"], data["cost_minor"], data["currency"]) == (4321, "c-1", 5, "EUR")
    assert (s.seq, s.id, s.epoch, s.type, s.kind, s.acked) == (1, f"{EPOCH}-1", EPOCH, USAGE_TYPE, "function", False)


def test_records_chain_each_prevhash_is_the_previous_hash(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        stored = led.append(batch(0, 5))
        stored += led.append(batch(5, 3))
    assert [s.seq for s in stored] == list(range(1, 9))
    assert [s.id for s in stored] == [f"{EPOCH}-{n}" for n in range(1, 9)]
    assert [s.event()["prevhash"] for s in stored] == [ZERO_HASH] + [s.hash for s in stored[:-1]]
    assert [s.event()["sequence"] for s in stored] == [f"{n:020d}" for n in range(1, 9)]


def test_a_record_without_an_appliance_carries_the_gateway_subject(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key, gateway_subject="urn:koto:subject:gateway-7") as led:
        (s,) = led.append([lifecycle("start")])
    ev = s.event()
    assert (ev["type"], ev["subject"], s.kind) == (LIFECYCLE_TYPE, "urn:koto:subject:gateway-7", "")


def test_unsynchronised_time_is_marked_u(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        (s,) = led.append([usage(0, time_status=TimeStatus.UNSYNCED)])
    assert s.event()["timestatus"] == "U"


def test_unicode_and_nested_data_stay_canonical(db: Path, key: PrivateKey) -> None:
    extra = {"note": "Wäsche ☃ \"quoted\" \\ \n", "tags": ["ä", 1, {"b": 2, "a": "x"}]}
    with open_ledger(db, key) as led:
        (s,) = led.append([usage(0, appliance="Spülmaschine", extra=extra)])
        assert led.verify(key.public_key()).ok
    assert s.body == canonical_bytes(json.loads(s.body))
    assert s.event()["data"]["tags"] == ["ä", 1, {"a": "x", "b": 2}]


@pytest.mark.parametrize(
    "bad",
    [{"energy_mwh": 1.5}, {"ok": True}, {"none": None}, {"big": 2**60}, {"nested": {"f": 0.1}}],
    ids=["float", "bool", "none", "huge-int", "nested-float"],
)
def test_a_draft_with_non_canonical_data_is_refused_and_nothing_of_its_batch_is_stored(
    db: Path, key: PrivateKey, bad: dict[str, object]
) -> None:
    with open_ledger(db, key) as led:
        led.append(batch(0, 2), checkpoints={"meter": {"n": 2}})
        with pytest.raises(LedgerError, match="draft 1"):
            led.append([usage(2), usage(3, extra=bad)], checkpoints={"meter": {"n": 4}})
        assert led.head()[0] == 2
        assert led.checkpoint("meter") == {"n": 2}


# ---------------------------------------------------------------------------------------------- durability, resume


def test_reopening_resumes_the_same_epoch_and_chain(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        first = led.append(batch(0, 3))
    with Ledger.open(db, gateway_id=GW, key=key) as led:  # epoch not given: the stored one
        assert led.epoch == EPOCH
        assert led.head() == (3, first[-1].hash)
        (s,) = led.append(batch(3, 1))
        assert (s.seq, s.event()["prevhash"]) == (4, first[-1].hash)
        assert led.verify(key.public_key()).ok


def test_checkpoints_commit_with_the_records_that_produced_them(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        led.append(batch(0, 2), checkpoints={"washer": {"register": 100, "open": ["spin"]}, "kettle": {"p": 7}})
        led.append([], checkpoints={"kettle": {"p": 9}})
    with open_ledger(db, None) as led:
        assert led.checkpoint("washer") == {"register": 100, "open": ["spin"]}
        assert led.checkpoints() == {"washer": {"register": 100, "open": ["spin"]}, "kettle": {"p": 9}}
        assert led.checkpoint("dryer") is None


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from koto.signing import load_private_key
    from metering.ledger import Ledger
    from tests.support.drafts import batch
    db, keyfile = Path(sys.argv[1]), Path(sys.argv[2])
    with Ledger.open(db, gateway_id="gw-test-1", key=load_private_key(keyfile)) as led:
        while True:
            head = led.head()[0]
            led.append(batch(head, 50), checkpoints={"meter": {"through": head + 50}})
            print(head + 50, flush=True)
    """
)


def test_a_killed_writer_leaves_records_and_checkpoint_in_step(tmp_path: Path, db: Path, key: PrivateKey) -> None:
    keyfile = tmp_path / "device.pem"
    save_private_key(key, keyfile)
    open_ledger(db, key).close()
    root = REPO
    for kill in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(keyfile)], stdout=subprocess.PIPE, text=True, cwd=root
        )
        assert child.stdout is not None
        for _ in range(2 + kill):  # let it commit a few batches, then kill it mid-stream
            assert child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait()
        with open_ledger(db, None) as led:
            assert led.checkpoint("meter") == {"through": led.head()[0]}
            assert led.verify(key.public_key()).ok


def test_one_writer_at_a_time(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key), pytest.raises(LedgerError, match="another process is writing"):
        open_ledger(db, key)
    with open_ledger(db, key), open_ledger(db, None) as reader:  # readers are welcome
        assert reader.head() == (0, ZERO_HASH)


def test_a_ledger_of_another_gateway_is_refused_naming_the_file(db: Path, key: PrivateKey) -> None:
    open_ledger(db, key).close()
    with pytest.raises(LedgerError, match=f"{db}.*belongs to gateway 'gw-test-1', not 'gw-other'"):
        Ledger.open(db, gateway_id="gw-other", key=key)
    with pytest.raises(LedgerError, match="belongs to gateway"):
        Ledger.open(db, gateway_id="gw-other", key=None)
    assert read_gateway_id(db) == GW


def test_opening_read_only_needs_an_existing_ledger_and_cannot_append(db: Path, key: PrivateKey) -> None:
    with pytest.raises(LedgerError, match=f"{db}: no ledger"):
        open_ledger(db, None)
    open_ledger(db, key).close()
    with open_ledger(db, None) as led, pytest.raises(LedgerError, match="without the device key"):
        led.append(batch(0, 1))


def test_an_explicit_epoch_must_match_the_stored_one(db: Path, key: PrivateKey) -> None:
    open_ledger(db, key).close()
    with pytest.raises(LedgerError, match=f"epoch is {EPOCH}, not 5"):
        open_ledger(db, key, epoch=5)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path, key: PrivateKey) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match=str(junk)):
        Ledger.open(junk, gateway_id=GW, key=key)


# ---------------------------------------------------------------------------------------------- cycles


def test_a_cycle_record_names_the_first_and_last_seq_of_its_segments(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        led.append([usage(0, cycle_id="c1", function="fill"), usage(1, appliance="kettle", function="boil")])
        led.append([usage(2, cycle_id="c2"), usage(3, cycle_id="c1", kind=RecordKind.INTERIM)])
        stored = led.append(
            [
                usage(4, cycle_id="c1", kind=RecordKind.GAP),
                usage(5, cycle_id="c1", kind=RecordKind.CYCLE, function="cotton40", uses=1),
                usage(6, cycle_id="c2", kind=RecordKind.CYCLE, uses=1),
                usage(7, cycle_id="c3", kind=RecordKind.CYCLE, uses=1),  # no segments stored: nothing to name
            ]
        )
    c1, c2, c3 = (s.event()["data"] for s in stored[1:])
    assert (c1["first_seq"], c1["last_seq"]) == (1, 5)
    assert (c2["first_seq"], c2["last_seq"]) == (3, 3)
    assert "first_seq" not in c3 and "last_seq" not in c3


# ---------------------------------------------------------------------------------------------- acks, resend


def test_acks_advance_only_on_the_matching_hash(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        s = led.append(batch(0, 10))
        assert led.unacked_count() == 10
        assert led.mark_acked(EPOCH, 4, s[4].hash) is AckOutcome.MISMATCH  # hash of seq 5, not 4: an alarm
        assert led.acked_through() == 0
        assert led.mark_acked(EPOCH, 4, s[3].hash) is AckOutcome.ADVANCED
        assert led.acked_through() == 4
        assert led.mark_acked(EPOCH, 4, s[3].hash) is AckOutcome.ALREADY
        assert led.mark_acked(EPOCH, 2, s[1].hash) is AckOutcome.ALREADY
        assert led.mark_acked(EPOCH, 11, s[9].hash) is AckOutcome.BEYOND_HEAD
        assert led.mark_acked(EPOCH + 1, 10, s[9].hash) is AckOutcome.WRONG_EPOCH
        assert led.acked_through() == 4
        assert led.unacked_count() == 6
        assert [r.seq for r in led.unacked()] == [5, 6, 7, 8, 9, 10]
        assert [r.seq for r in led.unacked(after_seq=7, limit=2)] == [8, 9]
        assert led.get(4).acked and not led.get(5).acked  # type: ignore[union-attr]
        assert led.mark_acked(EPOCH, 10, s[9].hash) is AckOutcome.ADVANCED
        assert led.unacked() == [] and led.unacked_count() == 0
    with open_ledger(db, None) as led:
        assert led.acked_through() == 10  # durable


def test_unacked_records_are_resent_with_identical_bytes(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        appended = led.append(batch(0, 6))
        first = [r.body for r in led.unacked()]
    with open_ledger(db, key) as led:
        again = [r.body for r in led.unacked()]
        walked = [r.body for r in led.iter_records(2, 4)]
    assert first == again == [s.body for s in appended]
    assert walked == [s.body for s in appended[1:4]]


# ---------------------------------------------------------------------------------------------- prune


def test_prune_deletes_only_old_acked_records_and_keeps_the_chain_verifiable(db: Path, key: PrivateKey) -> None:
    day = 86400.0
    with open_ledger(db, key) as led:
        s = led.append([usage(i, t_end=T0 + i * day) for i in range(10)])  # one record a day
        now = T0 + 100 * day
        assert led.prune(retain_days=90, now_wall=now) == 0  # nothing acked: nothing leaves
        led.mark_acked(EPOCH, 6, s[5].hash)
        assert led.prune(retain_days=94, now_wall=now) == 6  # days 0..5 ended over 94 days ago and are acked
        assert led.anchor() == (7, s[5].hash)
        assert [r.seq for r in led.iter_records()] == [7, 8, 9, 10]
        report = led.verify(key.public_key())
        assert (report.ok, report.checked, report.first_seq, report.last_seq) == (True, 4, 7, 10)
        led.mark_acked(EPOCH, 10, s[9].hash)
        assert led.prune(retain_days=0, now_wall=T0 + 1000 * day) == 3  # never the head
        assert led.head() == (10, s[9].hash)
        (nxt,) = led.append([usage(10)])
        assert nxt.event()["prevhash"] == s[9].hash
        assert led.verify(key.public_key()).ok
        assert led.mark_acked(EPOCH, 3, s[2].hash) is AckOutcome.ALREADY  # a late ack for a pruned record


def test_prune_stops_at_the_first_record_still_within_retention(db: Path, key: PrivateKey) -> None:
    day = 86400.0
    ends = [0, 1, 50, 2, 3]  # seq 3 is recent: it and everything after it stay (the kept part is a suffix)
    with open_ledger(db, key) as led:
        s = led.append([usage(i, t_end=T0 + d * day) for i, d in enumerate(ends)])
        led.mark_acked(EPOCH, 5, s[4].hash)
        assert led.prune(retain_days=10, now_wall=T0 + 30 * day) == 2
        assert led.verify(key.public_key()).ok


# ---------------------------------------------------------------------------------------------- docs, kv, usage


def test_documents_and_settings_are_stored_beside_the_records(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        led.put_doc("tariff", "household", 3, {"per_kwh_minor": 31})
        led.append(batch(0, 1), docs=[Doc("entitlement", "e1", 1, {"uses": 10})], kv={"last_dseq": "17"})
        led.put_doc("tariff", "household", 4, {"per_kwh_minor": 33})
        assert led.doc("tariff", "household") == Doc("tariff", "household", 4, {"per_kwh_minor": 33})
        assert led.docs("entitlement") == [Doc("entitlement", "e1", 1, {"uses": 10})]
        assert led.kv_get("last_dseq") == "17"
        led.kv_set("last_dseq", "18")
        assert led.kv_get("last_dseq") == "18" and led.kv_get("nope", "x") == "x"
        for owned in ("head_seq", "acked_through", "epoch", "gateway_id", "anchor_prevhash"):
            with pytest.raises(LedgerError, match=owned):
                led.kv_set(owned, "0")


def test_usage_sums_energy_of_partitions_uses_of_cycles_and_cost_of_all(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        led.append(
            [
                usage(0, cycle_id="c1", function="fill", energy_mwh=100, cost_minor=1),
                usage(1, cycle_id="c1", function="spin", energy_mwh=300, cost_minor=3, kind=RecordKind.INTERIM),
                usage(2, cycle_id="c1", function="spin", energy_mwh=200, cost_minor=2),
                usage(3, cycle_id="c1", function="cotton", energy_mwh=600, cost_minor=50, kind=RecordKind.CYCLE,
                      uses=1),
                usage(4, appliance="kettle", function="boil", energy_mwh=90, cost_minor=4, t_end=T0 + 86400 * 2),
                lifecycle("start"),
            ]
        )
        by_fn = {(r.appliance, r.key): r for r in led.usage_summary(by="function")}
        assert {k: (r.energy_mwh, r.uses, r.cost_minor, r.currency) for k, r in by_fn.items()} == {
            ("washer", "fill"): (100, 0, 1, "EUR"),
            ("washer", "spin"): (500, 0, 5, "EUR"),
            ("washer", "cotton"): (0, 1, 50, "EUR"),  # the cycle's energy is its segments', counted once
            ("kettle", "boil"): (90, 0, 4, "EUR"),
        }
        assert by_fn[("washer", "spin")].duration_ms == 120_000
        by_cycle = led.usage_summary(appliance="washer", by="cycle")
        assert [(r.key, r.energy_mwh, r.uses, r.cost_minor, r.records) for r in by_cycle] == [("c1", 600, 1, 56, 4)]
        by_day = led.usage_summary(by="day", tz=ZoneInfo("Europe/Berlin"))
        assert [(r.appliance, r.key, r.energy_mwh) for r in by_day] == [
            ("kettle", "2027-01-17", 90),
            ("washer", "2027-01-15", 600),
        ]
        assert [r.key for r in led.usage_summary(since_wall=T0 + 86400)] == ["boil"]
        with pytest.raises(LedgerError, match="allowed: function, day, cycle"):
            led.usage_summary(by="month")  # type: ignore[arg-type]


def test_costs_in_different_currencies_are_never_added(db: Path, key: PrivateKey) -> None:
    with open_ledger(db, key) as led:
        led.append([usage(0, cost_minor=5, currency="EUR"), usage(1, cost_minor=7, currency="CHF")])
        (row,) = led.usage_summary()
    assert row.costs == (("CHF", 7), ("EUR", 5))
    assert (row.currency, row.cost_minor) == ("", 0)
