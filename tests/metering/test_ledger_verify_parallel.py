"""`koto verify` on a big ledger checks chunks in worker processes; it must say exactly what the one-process walk
says (the same first bad seq and reason) for every kind of damage, on chunk edges above all."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from koto.signing import PrivateKey
from metering.ledger import Ledger, VerifyReport
from tests.support.drafts import batch

GW = "gw-par"
N = 40
CHUNK = 7  # seqs 7/8, 14/15, ... sit on chunk edges


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, key: PrivateKey) -> Path:
    path = tmp_path_factory.mktemp("par") / "ledger.db"
    with Ledger.open(path, gateway_id=GW, key=key, epoch=1_790_000_002) as led:
        led.append(batch(0, N))
        led.wal_checkpoint()
    return path


def flip_body(seq: int) -> Callable[[sqlite3.Connection], None]:
    def damage(conn: sqlite3.Connection) -> None:
        (body,) = conn.execute("SELECT body FROM records WHERE seq=?", (seq,)).fetchone()
        i = len(body) // 2
        conn.execute("UPDATE records SET body=? WHERE seq=?", (body[:i] + bytes([body[i] ^ 1]) + body[i + 1:], seq))
    return damage


def sql(statement: str) -> Callable[[sqlite3.Connection], None]:
    return lambda conn: conn.execute(statement)


DAMAGE = {
    "none": sql("SELECT 1"),
    "body of an edge's first record": flip_body(8),
    "body of an edge's last record": flip_body(14),
    "body in the middle": flip_body(23),
    "hash column on an edge": sql("UPDATE records SET hash='" + "0" * 64 + "' WHERE seq=7"),
    "deleted edge record": sql("DELETE FROM records WHERE seq=15"),
    "deleted head": sql(f"DELETE FROM records WHERE seq={N}"),
    "renumbered record": sql("UPDATE records SET seq=999 WHERE seq=21"),
    "chain head hash": sql("UPDATE kv SET value='" + "1" * 64 + "' WHERE key='head_hash'"),
}


def verify(path: Path, key: PrivateKey, **kw: int) -> VerifyReport:
    with Ledger.open(path, gateway_id=GW, key=None) as led:
        return led.verify(key.public_key(), **kw)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_worker_processes_name_what_one_process_names(pristine: Path, tmp_path: Path, key: PrivateKey,
                                                      damage: str) -> None:
    path = tmp_path / "ledger.db"
    shutil.copy(pristine, path)
    conn = sqlite3.connect(path, isolation_level=None)
    DAMAGE[damage](conn)
    conn.close()
    one = verify(path, key, workers=1)
    assert one.ok == (damage == "none")
    with Ledger.open(path, gateway_id=GW, key=None) as led:
        from metering.ledger.verify import verify_chain

        pooled = verify_chain(led._conn, led.epoch, f"urn:koto:gw:{GW}", key.public_key(), path=path, workers=2,
                              chunk=CHUNK)
    assert pooled == one


def test_progress_is_reported_as_chunks_finish(pristine: Path, key: PrivateKey) -> None:
    seen: list[tuple[int, int]] = []
    with Ledger.open(pristine, gateway_id=GW, key=None) as led:
        from metering.ledger.verify import verify_chain

        report = verify_chain(led._conn, led.epoch, f"urn:koto:gw:{GW}", key.public_key(), path=pristine,
                              workers=2, chunk=CHUNK, progress=lambda done, total: seen.append((done, total)))
    assert report.ok and report.checked == N
    assert [d for d, _ in seen] == [7, 14, 21, 28, 35, 40] and {t for _, t in seen} == {N}
