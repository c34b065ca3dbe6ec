"""Pruning in small steps, and a local-only ledger's prune that folds what leaves into running totals."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from koto.signing import generate_key
from metering.errors import LedgerError
from metering.ledger import Ledger
from metering.records import RecordKind
from tests.support.drafts import T0, usage

DAY = 86400.0


def test_a_prune_step_deletes_at_most_max_rows_and_the_next_step_continues(tmp_path: Path) -> None:
    key = generate_key()
    with Ledger.open(tmp_path / "l.db", gateway_id="gw", key=key) as led:
        s = led.append([usage(i, t_end=T0 + i) for i in range(25)])
        led.mark_acked(led.epoch, 25, s[-1].hash)
        steps = []
        while n := led.prune(1, T0 + 10 * DAY, max_rows=10):
            steps.append(n)
        assert steps == [10, 10, 4]  # never the head
        assert led.anchor() == (25, s[23].hash)
        assert led.verify(key.public_key(), workers=1).ok


def test_a_local_only_prune_ignores_acks_and_folds_the_records_into_totals(tmp_path: Path) -> None:
    key = generate_key()
    with Ledger.open(tmp_path / "l.db", gateway_id="gw", key=key) as led:
        drafts = [usage(i, appliance=("washer", "oven")[i % 2], function="wash", t_end=T0 + i, energy_mwh=100 + i,
                        cost_minor=3) for i in range(10)]
        drafts.append(usage(10, kind=RecordKind.CYCLE, appliance="washer", cycle_id="c1", uses=1, t_end=T0 + 10,
                            energy_mwh=500, cost_minor=40))
        led.append([*drafts, usage(11, t_end=T0 + 20 * DAY)])  # the last one is recent: it stays
        assert led.prune(5, T0 + 20 * DAY) == 0  # nothing acked: with a cloud nothing leaves
        assert led.prune(5, T0 + 20 * DAY, max_rows=4, local_only=True) == 4
        assert led.prune(5, T0 + 20 * DAY, local_only=True) == 7
        totals = {(t.appliance, t.key, t.currency): t for t in led.pruned_totals()}
        washer = totals[("washer", "wash", "EUR")]
        assert washer.energy_mwh == sum(100 + i for i in range(0, 10, 2))  # the cycle restates energy: not added
        assert washer.uses == 1 and washer.cost_minor == 5 * 3 + 40 and washer.records == 6
        assert totals[("oven", "wash", "EUR")].energy_mwh == sum(100 + i for i in range(1, 10, 2))
        assert led.verify(key.public_key(), workers=1).ok
        with pytest.raises(LedgerError, match="belongs to the ledger"):
            led.kv_set("pruned_totals", "{}")  # nobody else may write the totals


def test_the_wal_checkpoint_does_not_wait_for_a_reader_and_truncates_once_it_is_gone(tmp_path: Path) -> None:
    """A reader's snapshot (`koto usage` on a big ledger, Home Assistant's first count) must not hold the writer:
    the checkpoint folds what it can and says so, instead of waiting out the busy timeout under the ledger's lock."""
    key = generate_key()
    path = tmp_path / "l.db"
    wal = path.with_name("l.db-wal")
    with Ledger.open(path, gateway_id="gw", key=key) as led:
        led._conn.execute("PRAGMA busy_timeout=3600000")  # were it to wait, this test would hang (faulthandler)
        led.append([usage(i, t_end=T0 + i) for i in range(5)])
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM records").fetchone() == (5,)  # a snapshot held open
            led.append([usage(5, t_end=T0 + 5)])  # frames the reader's snapshot does not cover
            done = threading.Event()
            outcome: list[bool] = []
            worker = threading.Thread(target=lambda: (outcome.append(led.wal_checkpoint()), done.set()), daemon=True)
            worker.start()
            assert done.wait(60), "the checkpoint waited for the reader"
            assert outcome == [False] and wal.stat().st_size > 0  # blocked: the WAL stays for the next one
            assert led._conn.execute("PRAGMA busy_timeout").fetchone() == (3600000,)  # the writer's wait restored
        finally:
            reader.close()
        assert led.wal_checkpoint() is True
        assert wal.stat().st_size == 0
        assert led.verify(key.public_key(), workers=1).ok
