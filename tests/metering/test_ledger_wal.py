"""The ledger's WAL limits are set on every connection (see `store._PRAGMAS` for why each value), new ledgers get the
small page size and keep it, an existing ledger keeps the page size it was made with, and an unchanged checkpoint is
not written again (each of them is SD-card bytes: docs/ledger.md, "Write budget")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from koto.signing import generate_key
from metering.ledger import Ledger
from metering.ledger.store import CACHE_KIB, PAGE_SIZE, WAL_AUTOCHECKPOINT_PAGES, wal_limits
from metering.records import LIFECYCLE_TYPE, Draft, TimeStatus


def test_a_ledger_runs_with_its_wal_limits_and_durable_commits(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db", gateway_id="gw", key=generate_key()) as ledger:
        conn = ledger._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES == 4096
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == (WAL_AUTOCHECKPOINT_PAGES + 1) * PAGE_SIZE
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB == -512  # KiB, not SQLite's 2,000


def test_an_existing_ledger_keeps_its_page_size_and_gets_limits_to_match(tmp_path: Path) -> None:
    """A ledger made with 4 KiB pages (before 2026-12-05) stays at 4 KiB, with the same 4 MiB WAL in its pages."""
    db = tmp_path / "old.db"
    old = sqlite3.connect(db, isolation_level=None)
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.close()
    key = generate_key()
    with Ledger.open(db, gateway_id="gw", key=key) as ledger:
        ledger.append([Draft(LIFECYCLE_TYPE, "urn:koto:gw:gw", 1.7e9, TimeStatus.UNSYNCED, {"event": "start"})])
        conn = ledger._conn
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert wal_limits(4096) == (1024, 1025 * 4096)
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1024
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 1025 * 4096
    with Ledger.open(db, gateway_id="gw", key=None) as ledger:
        assert ledger.head()[0] == 1
        assert ledger.verify(key.public_key()).ok


def test_an_unchanged_checkpoint_is_not_written_again(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    key = generate_key()
    watcher = sqlite3.connect(db)  # data_version moves when another connection commits
    try:
        def version() -> int:
            return int(watcher.execute("PRAGMA data_version").fetchone()[0])

        with Ledger.open(db, gateway_id="gw", key=key) as ledger:
            ledger.append([], checkpoints={"m": {"raw": 1}, "p": {"x": 1}})
            v = version()
            assert ledger.append([], checkpoints={"m": {"raw": 1}, "p": {"x": 1}}) == []
            assert version() == v  # nothing changed: no transaction at all
            ledger.append([], checkpoints={"m": {"raw": 2}, "p": {"x": 1}})
            assert version() != v
        # a new writer knows what is stored: the same state again writes nothing, a moved one is stored
        with Ledger.open(db, gateway_id="gw", key=key) as ledger:
            v = version()
            ledger.append([], checkpoints={"m": {"raw": 2}, "p": {"x": 1}})
            assert version() == v
            ledger.append([], checkpoints={"p": {"x": 2}})
            assert version() != v
            assert ledger.checkpoints() == {"m": {"raw": 2}, "p": {"x": 2}}
    finally:
        watcher.close()
