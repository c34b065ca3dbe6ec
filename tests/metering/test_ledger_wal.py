"""The ledger's WAL limits are set on every connection (see `store._PRAGMAS` for why each value)."""

from __future__ import annotations

from pathlib import Path

from koto.signing import generate_key
from metering.ledger import Ledger
from metering.ledger.store import PAGE_SIZE, WAL_AUTOCHECKPOINT_PAGES


def test_a_ledger_runs_with_its_wal_limits_and_durable_commits(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db", gateway_id="gw", key=generate_key()) as ledger:
        conn = ledger._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT_PAGES
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == (WAL_AUTOCHECKPOINT_PAGES + 1) * PAGE_SIZE
