"""`verify` fails, naming the first bad seq, when any single byte of any stored record is changed.

Changes are made the way an attacker or a failing SD card would: through SQLite (body, hash, every column of the
row, rows deleted or swapped) and by flipping bytes of the database file itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from koto.canonical import canonical_bytes, parse_canonical, sha256_hex
from koto.signing import PrivateKey, generate_key
from metering.ledger import Ledger
from metering.ledger.store import K_HEAD_HASH
from metering.records import RecordKind
from tests.support.drafts import lifecycle, usage

GW = "gw-tamper"
EPOCH = 1_790_000_001

COLUMNS = ("id", "type", "kind", "appliance", "function", "cycle_id", "t_end_ms", "energy_mwh", "duration_ms",
           "uses", "cost_minor", "currency", "hash")


@pytest.fixture
def db(tmp_path: Path, key: PrivateKey) -> Path:
    """A small ledger with every kind of record: function, interim, gap, cycle, lifecycle (non-ASCII too)."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path, gateway_id=GW, key=key, epoch=EPOCH) as led:
        led.append([usage(0, cycle_id="c1", function="fill"), usage(1, cycle_id="c1", kind=RecordKind.INTERIM)])
        led.append(
            [
                usage(2, cycle_id="c1", kind=RecordKind.GAP, appliance="Spülmaschine"),
                usage(3, cycle_id="c1", kind=RecordKind.CYCLE, uses=1),
                lifecycle("config change"),
            ]
        )
        led.wal_checkpoint()
    return path


@pytest.fixture
def reader(db: Path) -> Iterator[Ledger]:
    with Ledger.open(db, gateway_id=GW, key=None) as led:
        yield led


@pytest.fixture
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # tampering needs no durability; keeps the byte-by-byte loops fast
    yield conn
    conn.close()


def rows(raw: sqlite3.Connection) -> list[tuple[int, bytes, str]]:
    return raw.execute("SELECT seq, body, hash FROM records ORDER BY seq").fetchall()


def assert_names(led: Ledger, key: PrivateKey, seq: int, what: str) -> None:
    report = led.verify(key.public_key())
    assert not report.ok, f"{what}: verify passed"
    assert report.first_bad_seq == seq, f"{what}: named seq {report.first_bad_seq} ({report.reason}), not {seq}"


def test_a_good_ledger_verifies(reader: Ledger, key: PrivateKey) -> None:
    report = reader.verify(key.public_key())
    assert (report.ok, report.checked, report.first_bad_seq, report.first_seq, report.last_seq) == (True, 5, None, 1, 5)


def test_another_key_does_not_verify_naming_the_first_record(reader: Ledger) -> None:
    report = reader.verify(generate_key().public_key())
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 1, "signature does not verify")


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_byte_of_every_body_flipped_is_caught(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey, mask: int
) -> None:
    for seq, body, _ in rows(raw):
        for i in range(len(body)):
            bad = bytearray(body)
            bad[i] ^= mask
            raw.execute("UPDATE records SET body=? WHERE seq=?", (bytes(bad), seq))
            assert_names(reader, key, seq, f"seq {seq} body byte {i} ^ {mask:#x}")
        raw.execute("UPDATE records SET body=? WHERE seq=?", (body, seq))
    assert reader.verify(key.public_key()).ok


def test_every_character_of_every_stored_hash_changed_is_caught(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey
) -> None:
    for seq, _, h in rows(raw):
        for i in range(len(h)):
            bad = h[:i] + ("0" if h[i] != "0" else "1") + h[i + 1 :]
            raw.execute("UPDATE records SET hash=? WHERE seq=?", (bad, seq))
            assert_names(reader, key, seq, f"seq {seq} hash char {i}")
        raw.execute("UPDATE records SET hash=? WHERE seq=?", (h, seq))


@pytest.mark.parametrize("column", COLUMNS)
def test_every_column_of_the_row_changed_is_caught(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey, column: str
) -> None:
    for (seq,) in raw.execute("SELECT seq FROM records ORDER BY seq").fetchall():
        (value,) = raw.execute(f"SELECT {column} FROM records WHERE seq=?", (seq,)).fetchone()
        changed = value ^ 1 if isinstance(value, int) else (chr(ord(value[0]) ^ 0x40) + value[1:] if value else "x")
        raw.execute(f"UPDATE records SET {column}=? WHERE seq=?", (changed, seq))
        assert_names(reader, key, seq, f"seq {seq} column {column}")
        raw.execute(f"UPDATE records SET {column}=? WHERE seq=?", (value, seq))
    assert reader.verify(key.public_key()).ok


@pytest.mark.parametrize("value", ["2026-12-05T10:00:00.000Z", 2**62, -(2**62), None, 1.5])
def test_a_time_column_of_another_type_or_beyond_any_clock_is_named_not_raised(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey, value: object
) -> None:
    """The time check formats the column to compare it with the record's `time`: a value that cannot be formatted
    (text, NULL, a float, an integer no calendar reaches) is a mismatch like any other, never an exception."""
    (seq,) = raw.execute("SELECT max(seq) FROM records").fetchone()
    (old,) = raw.execute("SELECT t_end_ms FROM records WHERE seq=?", (seq,)).fetchone()
    raw.execute("PRAGMA ignore_check_constraints=ON")
    with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL refuses NULL: nothing to check then
        raw.execute("UPDATE records SET t_end_ms=? WHERE seq=?", (value, seq))
        assert_names(reader, key, seq, f"t_end_ms {value!r}")
    raw.execute("UPDATE records SET t_end_ms=? WHERE seq=?", (old, seq))
    assert reader.verify(key.public_key()).ok


def test_a_deleted_record_is_named(reader: Ledger, raw: sqlite3.Connection, key: PrivateKey) -> None:
    raw.execute("DELETE FROM records WHERE seq=3")
    assert_names(reader, key, 3, "deleted seq 3")


def test_a_deleted_head_is_named(reader: Ledger, raw: sqlite3.Connection, key: PrivateKey) -> None:
    raw.execute("DELETE FROM records WHERE seq=5")
    assert_names(reader, key, 5, "deleted head")


def test_a_renumbered_record_is_named(reader: Ledger, raw: sqlite3.Connection, key: PrivateKey) -> None:
    raw.execute("UPDATE records SET seq=99 WHERE seq=2")
    assert_names(reader, key, 2, "seq 2 moved to 99")


def test_two_swapped_bodies_are_named(reader: Ledger, raw: sqlite3.Connection, key: PrivateKey) -> None:
    (_, b2, h2), (_, b3, h3) = rows(raw)[1:3]
    raw.execute("UPDATE records SET body=?, hash=? WHERE seq=2", (b3, h3))
    raw.execute("UPDATE records SET body=?, hash=? WHERE seq=3", (b2, h2))
    assert_names(reader, key, 2, "swapped 2 and 3")


def test_a_changed_chain_head_or_anchor_is_caught(reader: Ledger, raw: sqlite3.Connection, key: PrivateKey) -> None:
    raw.execute("UPDATE kv SET value=? WHERE key='head_hash'", ("0" * 64,))
    assert not reader.verify(key.public_key()).ok
    raw.execute("UPDATE kv SET value=? WHERE key='head_hash'", (rows(raw)[-1][2],))
    assert reader.verify(key.public_key()).ok
    raw.execute("UPDATE kv SET value='2' WHERE key='anchor_seq'")
    assert_names(reader, key, 1, "anchor moved")


def _file_flip_cases(data: bytes, body: bytes, h: str, currency: bytes) -> Iterator[int]:
    """Offsets in the file of a record's body (a sample), its stored hash and its text columns before the hash."""
    off = data.find(body)
    assert off > 0 and data.find(body, off + 1) == -1
    yield from range(off, off + len(body), 11)
    yield off + len(body) - 1
    # The currency and hash columns sit right before the body in the row. With 1 KiB pages (new ledgers) a ~1 KB
    # row spills onto an overflow page: its head (with the currency and the start of the hash) stays on the leaf,
    # the rest of the hash and the body continue on the overflow page.
    hb = h.encode()
    k = next(k for k in range(64, -1, -1) if data[off - k : off] == hb[64 - k :])
    yield from range(off - k, off)
    head = currency + hb[: 64 - k]
    at = off - k - len(head) if k == 64 else data.find(head)
    assert at > 0 and data[at : at + len(head)] == head and (k == 64 or data.find(head, at + 1) == -1)
    yield from range(at, at + len(head))


def test_bytes_flipped_in_the_database_file_are_caught(db: Path, raw: sqlite3.Connection, key: PrivateKey) -> None:
    records = raw.execute("SELECT seq, body, hash, currency FROM records ORDER BY seq").fetchall()
    raw.close()
    original = db.read_bytes()
    assert not db.with_name(db.name + "-wal").exists() or db.with_name(db.name + "-wal").stat().st_size == 0
    flips = 0
    for seq, body, h, currency in records:
        for pos in _file_flip_cases(original, body, h, currency.encode()):
            bad = bytearray(original)
            bad[pos] ^= 0x04
            db.write_bytes(bytes(bad))
            with Ledger.open(db, gateway_id=GW, key=None) as led:
                assert_names(led, key, seq, f"file byte {pos} (in seq {seq})")
            flips += 1
    db.write_bytes(original)
    with Ledger.open(db, gateway_id=GW, key=None) as led:
        assert led.verify(key.public_key()).ok
    assert flips > 300


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def test_a_signature_respelled_in_non_canonical_base64_is_caught(tmp_path: Path, key: PrivateKey) -> None:
    """Base64 decoders ignore the unused low bits of the last character: `verify` must not."""
    path = tmp_path / "b64.db"
    with Ledger.open(path, gateway_id=GW, key=key, epoch=EPOCH) as led:
        for i in range(200):  # a DER signature is 70-72 bytes; find one whose base64 has padding bits
            (s,) = led.append([usage(i)])
            sig = s.event()["sig"]
            if sig.endswith("="):
                break
        else:
            pytest.fail("no padded signature in 200 records")
        last = sig.rstrip("=")[-1]
        respelled = sig.rstrip("=")[:-1] + B64[B64.index(last) + 1] + sig[len(sig.rstrip("=")) :]
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE records SET body=? WHERE seq=?", (s.body.replace(sig.encode(), respelled.encode()), s.seq))
        conn.close()
        assert_names(led, key, s.seq, "sig with non-zero padding bits")


# The quick check (`every_signature=False`, what `koto usage` runs before its figures): every record's content,
# hash and link, and the last record's signature, which the chain ties every earlier record to.


def relink_after(raw: sqlite3.Connection, seq_changed: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change record `seq_changed` with `edit` and rebuild the chain after it as someone without the key would: every
    later record's prevhash and stored hash, and the chain head, made consistent again. Only the signatures, which
    need the key, are left as they were."""
    prev = ""
    for seq, body, h in rows(raw):
        if seq < seq_changed:
            prev = h
            continue
        event = parse_canonical(body)
        sig = event.pop("sig")
        if seq == seq_changed:
            edit(event)
        else:
            event["prevhash"] = prev
        prev = sha256_hex(canonical_bytes(event))
        signed_as_before = canonical_bytes({**event, "sig": sig})
        raw.execute("UPDATE records SET body=?, hash=? WHERE seq=?", (signed_as_before, prev, seq))
    raw.execute("UPDATE kv SET value=? WHERE key=?", (prev, K_HEAD_HASH))


def test_the_quick_check_catches_every_byte_of_a_records_content_flipped(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey
) -> None:
    for seq, body, _ in rows(raw):
        sig_at = body.rindex(b',"sig":"')
        sig_end = body.index(b'"', sig_at + len(b',"sig":"')) + 1
        for i in [*range(sig_at), *range(sig_end, len(body))]:
            bad = bytearray(body)
            bad[i] ^= 0x01
            raw.execute("UPDATE records SET body=? WHERE seq=?", (bytes(bad), seq))
            report = reader.verify(key.public_key(), every_signature=False)
            assert (report.ok, report.first_bad_seq) == (False, seq), f"seq {seq} body byte {i}: {report}"
        raw.execute("UPDATE records SET body=? WHERE seq=?", (body, seq))
    assert reader.verify(key.public_key(), every_signature=False).ok


def test_the_quick_check_catches_a_changed_record_whose_chain_was_rebuilt_at_the_last_signature(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey
) -> None:
    relink_after(raw, 2, lambda event: event.update(subject="someone else"))  # billed to another subject
    quick = reader.verify(key.public_key(), every_signature=False)
    assert (quick.ok, quick.first_bad_seq, quick.reason) == (False, 5, "signature does not verify")
    full = reader.verify(key.public_key())
    assert (full.ok, full.first_bad_seq, full.reason) == (False, 2, "signature does not verify")


def test_a_damaged_signature_of_a_record_before_the_last_is_left_to_the_full_walk(
    reader: Ledger, raw: sqlite3.Connection, key: PrivateKey
) -> None:
    """What the quick check gives up: a record whose content is intact but whose own signature is not (here another
    record's, valid base64 and DER); its figures are still the ones the last signature vouches for."""
    (_, body2, _), (_, body3, _) = rows(raw)[1:3]
    sig2, sig3 = parse_canonical(body2)["sig"], parse_canonical(body3)["sig"]
    raw.execute("UPDATE records SET body=? WHERE seq=2", (body2.replace(sig2.encode(), sig3.encode()),))
    assert reader.verify(key.public_key(), every_signature=False).ok
    full = reader.verify(key.public_key())
    assert (full.ok, full.first_bad_seq, full.reason) == (False, 2, "signature does not verify")
