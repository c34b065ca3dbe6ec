"""The ledger's signer process: large batches are signed on the second core, with the same records as in-process
signing, and the ledger survives the signer dying (it signs in-process) and never leaves it behind (kill -9)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, KeysView, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from koto.canonical import canonical_bytes
from koto.signing import PrivateKey, generate_key, save_private_key, verify_bytes
from metering.errors import LedgerError
from metering.ledger import _SIGNER_CHUNK, SIGNER_MIN_BATCH, Ledger, Stored
from metering.records import RecordKind

from .ledger_support import batch, usage

BIG = SIGNER_MIN_BATCH + 37  # not a multiple of the chunk size: the last chunk is short


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_key()


def open_ledger(path: Path, key: PrivateKey) -> Ledger:
    return Ledger.open(path, gateway_id="gw-sign", key=key, epoch=1_700_000_000)


def started(led: Ledger) -> Ledger:
    """Start the signer with a first large batch and wait until it has proven it holds the key."""
    led.append(batch(1000, SIGNER_MIN_BATCH))
    signer = led._signer
    assert signer is not None and signer.check_ready(30.0), "the signer process did not start"
    return led


def unsigned(s: Stored) -> bytes:
    ev = json.loads(s.body)
    del ev["sig"]
    return canonical_bytes(ev)


def cycle_drafts(start: int) -> list:  # type: ignore[type-arg]
    """Cycles whose segments fall in earlier chunks, the same chunk, and an earlier batch."""
    out = []
    for c in range(12):
        cid = f"washer-{start}-{c}"
        out += [usage(start + 10 * c + k, cycle_id=cid, function=("fill", "wash", "spin")[k % 3]) for k in range(8)]
        out.append(usage(start + 10 * c + 9, kind=RecordKind.CYCLE, cycle_id=cid, uses=1, energy_mwh=8000))
    return out


def test_a_large_batch_is_signed_by_the_signer_and_equals_in_process_signing(tmp_path: Path, key: PrivateKey) -> None:
    drafts = batch(0, 5) + cycle_drafts(100) + batch(300, BIG)
    with open_ledger(tmp_path / "a.db", key) as a, open_ledger(tmp_path / "b.db", key) as b:
        started(a)
        b.append(batch(1000, SIGNER_MIN_BATCH))
        b._signer_failed = True  # b signs in-process: the reference
        if b._signer is not None:
            b._signer.close()
            b._signer = None
        via_signer = a.append(drafts) + a.append(cycle_drafts(2000)[:40]) + a.append(cycle_drafts(2000)[40:])
        in_process = b.append(drafts) + b.append(cycle_drafts(2000)[:40]) + b.append(cycle_drafts(2000)[40:])
        assert a._signer is not None and not a._signer.gone, "the signer fell back to in-process signing"
        assert a.verify(key.public_key()).ok
        assert [unsigned(s) for s in via_signer] == [unsigned(s) for s in in_process]
        assert [s.hash for s in via_signer] == [s.hash for s in in_process]
        for s in via_signer:
            assert s.body == canonical_bytes(json.loads(s.body))
            assert verify_bytes(key.public_key(), unsigned(s), json.loads(s.body)["sig"])
        cycles = [s.event()["data"] for s in via_signer if s.kind == "cycle"]
        assert cycles and all(c["last_seq"] - c["first_seq"] == 7 for c in cycles)


def test_small_batches_never_start_the_signer(tmp_path: Path, key: PrivateKey) -> None:
    with open_ledger(tmp_path / "l.db", key) as led:
        for i in range(0, 100, 10):
            led.append(batch(i, 10))
        assert led._signer is None
        assert led.verify(key.public_key()).ok


def test_a_killed_signer_is_replaced_by_in_process_signing(
    tmp_path: Path, key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    with open_ledger(tmp_path / "l.db", key) as led:
        started(led)
        signer = led._signer
        assert signer is not None
        os.kill(signer._proc.pid, signal.SIGKILL)
        signer._proc.wait(10)
        with caplog.at_level(logging.WARNING, logger="metering.ledger"):
            stored = led.append(batch(0, BIG))  # the signer owed answers when it was found dead
            stored += led.append(batch(BIG, BIG))
        assert len(stored) == 2 * BIG
        assert signer.gone
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1, "logged once"
        assert "signing in-process" in caplog.records[0].message
        assert led.verify(key.public_key()).ok


class _KillsTheSigner(Mapping[str, Any]):
    """A draft's data that SIGKILLs the signer when the ledger copies it: the signer dies holding work."""

    def __init__(self, data: dict[str, Any], pid: int) -> None:
        self._data, self._pid = data, pid

    def keys(self) -> KeysView[str]:
        os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        return self._data.keys()

    def __getitem__(self, k: str) -> Any:
        return self._data[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_a_signer_that_dies_in_the_middle_of_a_batch_leaves_no_record_unsigned(tmp_path: Path, key: PrivateKey) -> None:
    with open_ledger(tmp_path / "l.db", key) as led:
        started(led)
        signer = led._signer
        assert signer is not None
        drafts = batch(0, BIG)
        k = 3 * _SIGNER_CHUNK + 1  # by then the signer holds chunks it will never answer
        drafts[k] = replace(drafts[k], data=_KillsTheSigner(drafts[k].data, signer._proc.pid))  # type: ignore[arg-type]
        stored = led.append(drafts)
        assert signer.gone and len(stored) == BIG
        assert led.verify(key.public_key()).ok


def test_a_bad_draft_in_a_large_batch_stores_nothing_and_keeps_the_signer_in_step(
    tmp_path: Path, key: PrivateKey
) -> None:
    with open_ledger(tmp_path / "l.db", key) as led:
        started(led)
        head = led.head()
        bad = batch(0, BIG)
        bad[BIG - 3] = usage(BIG - 3, extra={"energy": 1.5})  # refused after chunks went to the signer
        with pytest.raises(LedgerError, match=rf"draft {BIG - 3}: data.energy"):
            led.append(bad)
        assert led.head() == head
        led.append(batch(0, BIG))
        assert led._signer is not None and not led._signer.gone
        assert led.verify(key.public_key()).ok


def test_the_ledger_signs_in_process_when_the_signer_cannot_start(
    tmp_path: Path, key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with open_ledger(tmp_path / "l.db", key) as led:
        for i in range(3):
            led.append(batch(i * BIG, BIG))
        assert led._signer is None and led._signer_failed
        assert led.verify(key.public_key()).ok


def test_closing_the_ledger_ends_the_signer(tmp_path: Path, key: PrivateKey) -> None:
    led = started(open_ledger(tmp_path / "l.db", key))
    signer = led._signer
    assert signer is not None
    led.close()
    assert signer._proc.poll() is not None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[1:2] == ["Z"] for line in f if line.startswith("State:"))
    except FileNotFoundError:
        return True


def test_kill_9_of_the_gateway_leaves_no_signer_behind(tmp_path: Path, key: PrivateKey) -> None:
    key_path = tmp_path / "device.pem"
    save_private_key(key, key_path)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from koto.signing import load_private_key
        from metering.ledger import SIGNER_MIN_BATCH, Ledger
        from tests.ledger_support import batch
        key = load_private_key(Path({str(key_path)!r}))
        led = Ledger.open(Path({str(tmp_path / "l.db")!r}), gateway_id="gw-sign", key=key)
        led.append(batch(0, SIGNER_MIN_BATCH))
        assert led._signer.check_ready(30.0)
        led.append(batch(SIGNER_MIN_BATCH, SIGNER_MIN_BATCH))
        print(led._signer._proc.pid, flush=True)
        time.sleep(60)
        """
    )
    gw = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        signer_pid = int(gw.stdout.readline())
        assert not _gone(signer_pid)
        gw.kill()
        gw.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(signer_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(signer_pid), "the signer outlived the gateway"
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
