"""Schema 3 stores a record's body deflated (metering/ledger/bodies.py) and reads back exactly the signed bytes; a
ledger made before keeps its rows as they are, and is read, verified and appended to as one chain with both."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from koto.canonical import canonical_bytes
from koto.signing import PrivateKey, generate_key
from metering.ledger import SCHEMA_VERSION, Ledger
from metering.ledger.bodies import DICTIONARY, BodyError, pack, unpack
from metering.records import GapReason, RecordKind
from tests.support.drafts import lifecycle, usage

KEY: PrivateKey = generate_key()
GW = "gw-bodies"


def drafts(start: int) -> list:  # type: ignore[type-arg]
    return [usage(start, cycle_id="c1", function="fill"),
            usage(start + 1, cycle_id="c1", kind=RecordKind.GAP, appliance="Spülmaschine",
                  extra={"reason": str(GapReason.MAX_GAP)}),
            usage(start + 2, cycle_id="c1", kind=RecordKind.CYCLE, uses=1), lifecycle("config change")]


def stored_rows(db: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(db) as conn:
        return [(s, bytes(b)) for s, b in conn.execute("SELECT seq, body FROM records ORDER BY seq")]


def make_v2(db: Path) -> None:
    """What a Koto before schema 3 made: every body stored as its canonical bytes."""
    with sqlite3.connect(db) as conn:
        for seq, body in stored_rows(db):
            conn.execute("UPDATE records SET body=? WHERE seq=?", (unpack(body), seq))
        conn.execute("UPDATE kv SET value='2' WHERE key='schema_version'")
        conn.execute("PRAGMA user_version=2")


def test_a_new_ledger_stores_bodies_deflated_and_gives_back_the_signed_bytes(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    with Ledger.open(db, gateway_id=GW, key=KEY) as led:
        appended = led.append(drafts(0))
        for s in appended:
            event = s.event()
            assert s.body == canonical_bytes(event)  # what is published is the canonical text, sig included
        assert [r.body for r in led.iter_records()] == [s.body for s in appended]
        assert [r.body for r in led.unacked()] == [s.body for s in appended]
        assert led.get(2) == appended[1]
    rows = stored_rows(db)
    assert all(b[:1] != b"{" and unpack(b) == s.body for (_, b), s in zip(rows, appended, strict=True))
    assert sum(len(b) for _, b in rows) < 0.7 * sum(len(s.body) for s in appended)
    with Ledger.open(db, gateway_id=GW, key=None) as led:
        assert led.verify(KEY.public_key(), workers=1).ok
        gaps = [r for r in led.usage_summary(appliance="Spülmaschine") if r.key.startswith("gap")]
        assert [r.key for r in gaps] == ["gap: max_gap"]  # json_extract reads the deflated body (koto_body)


def test_a_schema_2_ledger_is_read_as_it_is_and_its_first_writer_appends_deflated_bodies(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with Ledger.open(db, gateway_id=GW, key=KEY) as led:
        first = led.append(drafts(0))
    make_v2(db)
    assert all(b[:1] == b"{" for _, b in stored_rows(db))
    with Ledger.open(db, gateway_id=GW, key=None) as led:  # read only: nothing changes
        assert [r.body for r in led.iter_records()] == [s.body for s in first]
        assert led.verify(KEY.public_key(), workers=1).ok
    with Ledger.open(db, gateway_id=GW, key=KEY) as led:  # the writer migrates: a version number, no row rewritten
        second = led.append(drafts(10))
    rows = stored_rows(db)
    assert [b for _, b in rows[:4]] == [s.body for s in first]
    assert all(b[:1] != b"{" and unpack(b) == s.body for (_, b), s in zip(rows[4:], second, strict=True))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM kv WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    with Ledger.open(db, gateway_id=GW, key=None) as led:
        assert [r.body for r in led.iter_records()] == [s.body for s in first + second]
        assert led.verify(KEY.public_key(), workers=1).ok
        assert led.verify(KEY.public_key(), workers=2).ok  # the worker processes read the mix too
        gaps = [r for r in led.usage_summary(appliance="Spülmaschine") if r.key.startswith("gap")]
        assert [(r.key, r.records) for r in gaps] == [("gap: max_gap", 2)]


def test_a_deflated_body_altered_or_cut_is_named_by_verify(tmp_path: Path) -> None:
    db = tmp_path / "cut.db"
    with Ledger.open(db, gateway_id=GW, key=KEY) as led:
        led.append(drafts(0))
    (seq, body), *_ = stored_rows(db)[1:]
    for bad in (body[:-1], body + b"\0", body[:2] + b"\0\0\0\0" + body[6:]):
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE records SET body=? WHERE seq=?", (bad, seq))
        with Ledger.open(db, gateway_id=GW, key=None) as led:
            report = led.verify(KEY.public_key(), workers=1)
        assert (report.ok, report.first_bad_seq) == (False, seq), report.reason


@given(st.binary(max_size=3000).map(lambda b: b"{" + b))
def test_pack_and_unpack_give_back_any_json_start(body: bytes) -> None:
    packed = pack(body)
    assert packed[:1] != b"{"
    assert unpack(packed) == body
    assert unpack(body) == body  # a row from before schema 3


def test_unpack_refuses_what_is_not_a_body_it_can_read() -> None:
    with pytest.raises(BodyError):
        unpack(b"\x78\x9c" + zlib.compress(b'{"a":1}')[2:])  # deflated without the dictionary
    other = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY + b"x")
    with pytest.raises(BodyError, match="dictionary"):
        unpack(other.compress(b'{"a":1}') + other.flush())
    with pytest.raises(BodyError):
        unpack(b"not json")
