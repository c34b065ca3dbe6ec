"""A ledger file deleted or replaced under its writer is noticed before the next commit: nothing more is written to
it (not into the unlinked file, not into the new one), what the writer still reached is saved next to the path, and
the error says so in one line (issue 10, item 5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from metering.errors import LedgerError, LedgerGone
from metering.ledger import Ledger
from tests.support.gw_child import append_usage, device_key, open_ledger


def head_of(path: Path, gateway_id: str = "gw-g") -> int:
    with Ledger.open(path, gateway_id=gateway_id, key=None) as ledger:
        return ledger.head()[0]


def test_a_deleted_ledger_is_not_written_and_what_it_held_is_saved(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, "gw-g")
    try:
        append_usage(ledger, 30, batch=10)
        os.unlink(tmp_path / "ledger.db")
        with pytest.raises(LedgerGone) as e:
            append_usage(ledger, 1)
        with pytest.raises(LedgerGone):  # every later write too, and the copy is made once
            ledger.kv_set("last_dseq", "1")
    finally:
        ledger.close()
    err = e.value
    assert err.found == "the file was deleted" and err.rescued == str(tmp_path / "ledger.db.rescued")
    assert str(err).startswith(f"the ledger {tmp_path / 'ledger.db'} was deleted or replaced while Koto ran")
    assert "start a new epoch (move the saved copy elsewhere" in str(err)
    assert not (tmp_path / "ledger.db").exists()  # no second chain started at the path
    assert sorted(p.name for p in tmp_path.glob("ledger.db.rescued*")) == ["ledger.db.rescued"]
    rescued = Path(err.rescued)
    assert head_of(rescued) == 30
    with Ledger.open(rescued, gateway_id="gw-g", key=None) as copy:
        assert copy.verify(device_key(tmp_path).public_key()).ok
    # A restart (systemd's Restart=always) does not start a second chain beside the rescued copy...
    with pytest.raises(LedgerError, match=r"ledger.db.rescued holds this ledger .* put it back"):
        open_ledger(tmp_path, "gw-g")
    assert not (tmp_path / "ledger.db").exists()
    # ...and once it is put back, the chain goes on from where it was.
    os.replace(rescued, tmp_path / "ledger.db")
    ledger = open_ledger(tmp_path, "gw-g")
    append_usage(ledger, 1)
    assert ledger.head()[0] == 31
    ledger.close()


def test_a_replaced_ledger_is_left_as_it_was_put_there(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, "gw-g")
    try:
        append_usage(ledger, 20, batch=10)
        with Ledger.open(tmp_path / "ledger.db", gateway_id="gw-g", key=None):
            pass
        other = tmp_path / "restored.db"
        shutil.copy(tmp_path / "ledger.db", other)  # a restore of an older copy, moved over the open file
        os.replace(other, tmp_path / "ledger.db")
        before = (tmp_path / "ledger.db").read_bytes()
        with pytest.raises(LedgerGone) as e:
            append_usage(ledger, 5)
    finally:
        ledger.close()
    assert e.value.found == "another file is at its path now"
    assert (tmp_path / "ledger.db").read_bytes() == before
    assert head_of(Path(e.value.rescued)) == 20


def test_a_reader_is_not_stopped_by_the_check(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, "gw-g")
    append_usage(ledger, 3)
    ledger.close()
    with Ledger.open(tmp_path / "ledger.db", gateway_id="gw-g", key=None) as reader:
        assert reader.head()[0] == 3


def test_when_no_copy_can_be_saved_a_marker_still_refuses_a_new_ledger(tmp_path: Path) -> None:
    """The copy fails (here: a file size limit smaller than the ledger, a real EFBIG from the kernel, standing in for
    a full disk): the error says no copy was saved, and a restart does not make a fresh ledger at seq 1 beside
    nothing, because `ledger.db.lost` refuses it in one line until the operator decides."""
    import resource
    import signal

    ledger = open_ledger(tmp_path, "gw-g")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        append_usage(ledger, 30, batch=10)
        os.unlink(tmp_path / "ledger.db")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        with pytest.raises(LedgerGone) as e:
            append_usage(ledger, 1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
        ledger.close()
    assert e.value.rescued == ""
    assert "NO copy could be saved" in str(e.value)
    assert not list(tmp_path.glob("ledger.db.rescued*"))
    marker = tmp_path / "ledger.db.lost"
    assert marker.exists()
    with pytest.raises(LedgerError, match=r"could not be saved .* rm .*ledger.db.lost") as refused:
        open_ledger(tmp_path, "gw-g")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "ledger.db").exists()
    marker.unlink()  # the operator accepts the loss: a new ledger may start
    open_ledger(tmp_path, "gw-g").close()
    assert (tmp_path / "ledger.db").exists()
