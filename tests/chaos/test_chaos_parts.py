"""The two test hooks the chaos suite relies on, checked on their own: a clock every incarnation of the gateway
shares (time never goes back across a restart; the wall clock jumps on request), and the power-cut image (the
ledger as its last commit left it, taken before the commit returns)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from metering.ledger import Ledger, facade, retention, store
from tests.support.anchored_clock import AnchoredClock
from tests.support.gw_child import append_usage, device_key, open_ledger
from tests.support.sim_gateway import SNAPSHOT_NAME, install_power_cut_snapshots


def test_a_restarted_gateways_clock_carries_on_where_the_last_one_was() -> None:
    real0 = time.monotonic_ns() - 5_000_000_000  # the run started 5 s ago
    first = AnchoredClock(10.0, real0_ns=real0, wall0=1_000.0).now()
    second = AnchoredClock(10.0, real0_ns=real0, wall0=1_000.0).now()  # the next incarnation
    assert second.mono_ns >= first.mono_ns
    assert first.mono_ns - real0 >= 50_000_000_000  # 5 real seconds are 50 simulated ones
    assert second.wall >= first.wall >= 1_050.0


def test_the_wall_clock_jumps_by_the_offset_in_the_file_and_monotonic_time_does_not(tmp_path: Path) -> None:
    offset = tmp_path / "wall_offset"
    clock = AnchoredClock(1.0, real0_ns=time.monotonic_ns(), wall0=1_000.0, offset_file=offset)
    before = clock.now()
    offset.write_text("7200")
    time.sleep(0.25)  # the offset file is read at most every 0.2 s
    after = clock.now()
    assert after.wall - before.wall == pytest.approx(7200.25, abs=0.2)
    assert 0 < after.mono_ns - before.mono_ns < 2_000_000_000


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The power-cut snapshot hooks installed for one test (the patched functions are put back after it)."""
    monkeypatch.setattr(store, "transaction", store.transaction)
    monkeypatch.setattr(facade.Ledger, "_write", facade.Ledger._write)
    monkeypatch.setattr(retention, "transaction", retention.transaction)  # type: ignore[attr-defined]
    install_power_cut_snapshots(tmp_path / "images")
    return tmp_path / "images"


def test_the_power_cut_image_holds_exactly_what_was_committed(tmp_path: Path, images: Path) -> None:
    ledger = open_ledger(tmp_path / "gw", "gw-1")
    try:
        append_usage(ledger, 30, batch=10)
        head, head_hash = ledger.head()
        ledger.kv_set("note", "acked-ish")  # the autocommit path is imaged too
    finally:
        ledger.close()
    conn = sqlite3.connect(images / SNAPSHOT_NAME)
    try:
        assert conn.execute("SELECT value FROM kv WHERE key = 'note'").fetchone() == ("acked-ish",)
    finally:
        conn.close()
    with Ledger.open(images / SNAPSHOT_NAME, gateway_id="gw-1", key=None) as image:
        assert image.head() == (head, head_hash)
        assert head == 30
        assert image.verify(device_key(tmp_path / "gw").public_key()).ok


def test_a_committed_prune_is_in_the_power_cut_image(tmp_path: Path, images: Path) -> None:
    """Retention's prune commits through its own reference to `transaction`: the image must follow it, or a power
    cut in the chaos suite would put back records a committed prune deleted (the anchor would move back)."""
    ledger = open_ledger(tmp_path / "gw", "gw-1")
    try:
        append_usage(ledger, 30, batch=10)
        rec = ledger.get(20)
        assert rec is not None
        ledger.mark_acked(ledger.epoch, 20, rec.hash)
        pruned = ledger.prune(1, time.time() + 10 * 86400)  # ten days on: every acked record is past retention
        anchor = ledger.anchor()
    finally:
        ledger.close()
    assert pruned == 20 and anchor[0] == 21
    with Ledger.open(images / SNAPSHOT_NAME, gateway_id="gw-1", key=None) as image:
        assert image.anchor() == anchor
        assert [r.seq for r in image.iter_records()] == list(range(21, 31))
        assert image.verify(device_key(tmp_path / "gw").public_key()).ok
