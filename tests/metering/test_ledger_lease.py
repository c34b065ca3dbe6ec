"""The daemon owns its ledger (SQLite's exclusive locking: no -shm, no WAL index writeback to the SD card) and lends
it to readers who ask with a lease (`metering.ledger.lease`). Real files, real processes: every reader here that
is not the test's own lease runs in a child process, as `koto usage` does beside the daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from koto.signing import PrivateKey, save_private_key
from metering.errors import LedgerGone
from metering.ledger import AckOutcome, Ledger
from metering.ledger.lease import lease_path, reader_lease
from metering.ledger.lending import RECLAIM_BACKOFF_MAX
from tests.support.drafts import usage
from tests.support.paths import REPO

GW = "gw-lease"
EPOCH = 1_790_000_000

# A plain sqlite3 connection in another process, as someone's `sqlite3 ledger.db` shell: the chain head, or "locked".
PEEK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0.2)
try:
    print(conn.execute("SELECT value FROM kv WHERE key='head_seq'").fetchone()[0])
except sqlite3.OperationalError as e:
    print("locked" if "locked" in str(e) else e)
"""

# `koto usage` and friends: a reader Ledger in another process. It prints the seqs it reads, then (with `hold`)
# keeps its connection and lease open, reading again for every line on stdin, until stdin closes.
READER = """
import json, sys
from metering.ledger import Ledger
with Ledger.open(sys.argv[1], gateway_id=sys.argv[2], key=None) as ledger:
    print(json.dumps([r.seq for r in ledger.iter_records()]), flush=True)
    if len(sys.argv) > 3:
        for _ in sys.stdin:
            print(json.dumps([r.seq for r in ledger.iter_records()]), flush=True)
"""

# A plain read transaction held open by a process that took no lease, until stdin closes.
LEASELESS = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN")
print(conn.execute("SELECT count(*) FROM records").fetchone()[0], flush=True)
sys.stdin.read()
"""


@contextmanager
def leaseless_reader_of(ledger: Ledger, db: Path) -> Iterator[None]:
    """The exclusive writer lent (a reader with a lease came and went) and, until the block ends, a process that
    took no lease (someone's `sqlite3` shell) reading its records in an open transaction."""
    with reader_lease(db):
        assert ledger.serve_readers() == "lent"
        shell = subprocess.Popen([sys.executable, "-c", LEASELESS, str(db)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert shell.stdout is not None and shell.stdin is not None
        assert shell.stdout.readline().strip() == str(ledger.head()[0])
        yield
    finally:
        if shell.stdin is not None:
            shell.stdin.close()
        shell.wait(30)


def open_writer(db: Path, key: PrivateKey, *, exclusive: bool = True) -> Ledger:
    return Ledger.open(db, gateway_id=GW, key=key, epoch=EPOCH, exclusive=exclusive)


def add(ledger: Ledger, n: int, **kw: object) -> None:
    first = ledger.head()[0]
    ledger.append([usage(first + i) for i in range(n)], **kw)  # type: ignore[arg-type]


def peek(db: Path) -> str:
    return subprocess.run([sys.executable, "-c", PEEK, str(db)], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()


def read_in_child(db: Path) -> list[int]:
    done = subprocess.run([sys.executable, "-c", READER, str(db), GW], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seqs: list[int] = json.loads(done.stdout)
    return seqs


def shm(db: Path) -> Path:
    return db.with_name(db.name + "-shm")


@contextmanager
def serving(ledger: Ledger, every_s: float = 0.1) -> Iterator[list[str | None]]:
    """The daemon's loop: `serve_readers()` every `every_s` from a thread; yields what it returned, in order."""
    said: list[str | None] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            said.append(ledger.serve_readers())

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield said
    finally:
        stop.set()
        thread.join()


def wait_for(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_exclusive_writer_writes_no_shm_and_no_other_process_can_read_its_file(tmp_path: Path,
                                                                                    key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 5)
        assert not ledger.lent
        assert db.with_name("ledger.db-wal").exists() and not shm(db).exists()  # the WAL index is in the heap
        assert peek(db) == "locked"
        assert lease_path(db).stat().st_mode & 0o777 == 0o600
    assert peek(db) == "5"  # closed: the file is anyone's again


def test_a_reader_in_another_process_borrows_the_ledger_and_the_daemon_takes_it_back(tmp_path: Path,
                                                                                   key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger, serving(ledger) as said:
        add(ledger, 10)
        assert read_in_child(db) == list(range(1, 11))  # the last record appended included
        assert "lent" in said
        holder = subprocess.Popen([sys.executable, "-c", READER, str(db), GW, "hold"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert json.loads(holder.stdout.readline()) == list(range(1, 11))
            assert ledger.lent and shm(db).exists()  # lent: the normal locking mode, WAL index shared
            add(ledger, 5)  # the daemon writes on while lent
            assert read_in_child(db) == list(range(1, 16))  # a second reader sees them
            holder.stdin.write("again\n")
            holder.stdin.flush()
            assert json.loads(holder.stdout.readline()) == list(range(1, 16))  # and so does the first
        finally:
            if holder.stdin is not None:
                holder.stdin.close()
            assert holder.wait(30) == 0
        wait_for(lambda: not ledger.lent)
        assert "reclaimed" in said
        assert peek(db) == "locked"  # exclusive again
        # The -shm was deleted by the last close of the lent connection, and the exclusive one makes none.
        assert not shm(db).exists()
        add(ledger, 3)
        assert not shm(db).exists()
    assert read_in_child(db) == list(range(1, 19))


def test_the_chain_verifies_after_lend_and_reclaim_cycles_and_held_acks_and_checkpoints_survive(
        tmp_path: Path, key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    wal = db.with_name("ledger.db-wal")
    with open_writer(db, key) as ledger:
        for cycle in range(4):
            add(ledger, 6, checkpoints={"washer": {"cycle": cycle}})
            through = ledger.head()[0] - 2
            rec = ledger.get(through)
            assert rec is not None
            assert ledger.mark_acked(EPOCH, through, rec.hash, at_wall=1.8e9 + cycle, hold=True) is AckOutcome.ADVANCED
            with reader_lease(db):  # the test is the reader that asks
                assert ledger.serve_readers() == "lent"
                assert ledger.serve_readers() is None  # still asked: nothing changes
                assert ledger.held_ack() == through  # held, not written
                assert read_in_child(db) == list(range(1, ledger.head()[0] + 1))
            assert ledger.serve_readers() == "reclaimed"
            assert ledger.serve_readers() is None
            assert ledger.held_ack() == through and ledger.acked_through() == through
            size = wal.stat().st_size if wal.exists() else 0
            assert ledger.append([], checkpoints={"washer": {"cycle": cycle}}) == []  # as stored: not written again
            assert (wal.stat().st_size if wal.exists() else 0) == size
        assert ledger.checkpoint("washer") == {"cycle": 3}
        report = ledger.verify(key.public_key())
        assert report.ok and report.checked == 24
    with Ledger.open(db, gateway_id=GW, key=None) as reader:
        assert reader.acked_through() == 22  # the held ack was written at close
        assert reader.verify(key.public_key(), workers=2).ok


KILLED_WRITER = """
import sys, time
from pathlib import Path
from koto.signing import load_private_key
from metering.ledger import Ledger
from tests.support.drafts import usage
db, key, lent = sys.argv[1], load_private_key(Path(sys.argv[2])), sys.argv[3] == "lent"
ledger = Ledger.open(db, gateway_id=sys.argv[4], key=key, epoch=1_790_000_000, exclusive=True)
assert ledger.lent == lent, ledger.lent
for i in range(0, 40, 8):
    ledger.append([usage(i + j) for j in range(8)])
print(ledger.head()[0], flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("state", ["exclusive", "lent"])
def test_a_writer_killed_while_exclusive_or_lent_loses_no_committed_record(tmp_path: Path, key: PrivateKey,
                                                                          state: str) -> None:
    db = tmp_path / "ledger.db"
    save_private_key(key, tmp_path / "device.pem")
    with reader_lease(db) if state == "lent" else open(os.devnull):  # a reader waiting as the daemon starts
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db), str(tmp_path / "device.pem"), state,
                                  GW], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "40", child.stderr.read() if child.stderr else ""
            assert shm(db).exists() == (state == "lent")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    with open_writer(db, key) as ledger:  # recovery from the WAL, whichever way its index was kept
        assert not ledger.lent
        assert ledger.head()[0] == 40
        assert ledger.verify(key.public_key()).ok


def test_a_reader_without_a_lease_does_not_hang_the_daemon_which_takes_its_file_back_later(
        tmp_path: Path, key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 4)
        with leaseless_reader_of(ledger, db):  # reading 4 records, in a transaction, with no lease
            for _ in range(3):
                t0 = time.monotonic()
                assert ledger.serve_readers() is None  # tried (or backing off), could not: stays lent
                assert time.monotonic() - t0 < 1.0
                assert ledger.lent
            add(ledger, 2)  # and writes on meanwhile
            assert ledger.head()[0] == 6
        looks = 1
        while ledger.serve_readers() != "reclaimed":  # at the next attempt after the backoff
            looks += 1
            assert looks <= 3
        assert peek(db) == "locked"
        add(ledger, 1)
        assert ledger.verify(key.public_key()).ok


def test_a_writer_that_finds_a_leaseless_reader_at_open_starts_lent(tmp_path: Path, key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    with open_writer(db, key, exclusive=False) as ledger:
        add(ledger, 2)
    shell = subprocess.Popen([sys.executable, "-c", LEASELESS, str(db)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert shell.stdout is not None and shell.stdin is not None
        assert shell.stdout.readline().strip() == "2"
        t0 = time.monotonic()
        ledger = open_writer(db, key)  # the daemon starts while someone's sqlite3 shell reads
        assert time.monotonic() - t0 < 2.0 and ledger.lent
    finally:
        if shell.stdin is not None:
            shell.stdin.close()
        shell.wait(30)
    with ledger:
        add(ledger, 1)
        assert ledger.serve_readers() == "reclaimed" and peek(db) == "locked"


def test_a_reader_with_no_daemon_opens_at_once(tmp_path: Path, key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    with open_writer(db, key, exclusive=False) as ledger:
        add(ledger, 3)
    t0 = time.monotonic()
    assert read_in_child(db) == [1, 2, 3]
    with Ledger.open(db, gateway_id=GW, key=None) as reader:
        assert reader.head()[0] == 3
    assert time.monotonic() - t0 < 5.0  # a child's start-up included; no wait for a lend
    assert lease_path(db).exists()  # the reader made the lease file


def test_a_daemon_that_does_not_lend_is_named_in_one_plain_line(tmp_path: Path, key: PrivateKey) -> None:
    db = tmp_path / "ledger.db"
    impatient = ("import sys\nfrom metering.ledger import Ledger, store\nstore.BUSY_MS = 300\n"
                 "try:\n    Ledger.open(sys.argv[1], gateway_id=sys.argv[2], key=None)\n"
                 "except Exception as e:\n    print(type(e).__name__, e)\n")
    with open_writer(db, key) as ledger:  # nobody calls serve_readers: a hung daemon
        add(ledger, 1)
        done = subprocess.run([sys.executable, "-c", impatient, str(db), GW], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
    assert done.stdout.strip() == (f"LedgerError {db}: the gateway holds its ledger and did not lend it within 0.3 s "
                                   "(is koto.service hung? journalctl -u koto)")


KILLED_NORMAL_WRITER = """
import sys, time
from pathlib import Path
from koto.signing import load_private_key
from metering.ledger import Ledger
from tests.support.drafts import usage
key = load_private_key(Path(sys.argv[2]))
ledger = Ledger.open(sys.argv[1], gateway_id=sys.argv[3], key=key, epoch=1_790_000_000)
ledger.append([usage(i) for i in range(7)])
print("ok", flush=True)
time.sleep(60)
"""


def test_a_reader_on_a_read_only_directory_reads_without_a_lease(tmp_path: Path, key: PrivateKey) -> None:
    """A card taken from a gateway that died, mounted read-only elsewhere: no lease file, none can be made; SQLite
    reads a WAL ledger there when its -wal and -shm are present (as they were before the lease existed)."""
    folder = tmp_path / "card"
    folder.mkdir()
    db = folder / "ledger.db"
    save_private_key(key, tmp_path / "device.pem")
    child = subprocess.Popen([sys.executable, "-c", KILLED_NORMAL_WRITER, str(db), str(tmp_path / "device.pem"), GW],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None and child.stdout.readline().strip() == "ok"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert shm(db).exists() and not lease_path(db).exists()
    if os.geteuid() == 0:  # root writes through any mode bits: a read-only bind mount instead
        if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
            pytest.skip("cannot bind-mount here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        undo = ["umount", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        with pytest.raises(OSError):
            (folder / "probe").touch()
        lease = reader_lease(db)
        assert not lease.held and lease.why
        assert read_in_child(db) == list(range(1, 8))
    finally:
        subprocess.run(undo, check=True)
    assert not lease_path(db).exists()


def test_no_lend_while_a_usage_cursor_of_the_daemon_is_open(tmp_path: Path, key: PrivateKey) -> None:
    """`iter_usage` reads its cursor across releases of the ledger's mutex (the status page's day figures); closing
    the connection under it would break it, so the lend waits for it to be read to the end or dropped."""
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 3)
        rows = ledger.iter_usage()
        first = next(rows)
        with reader_lease(db):
            assert ledger.serve_readers() is None and not ledger.lent
            assert [first, *rows][0].energy_mwh == 3000
            assert ledger.serve_readers() == "lent"
        assert ledger.serve_readers() == "reclaimed"
        dropped = ledger.iter_usage()
        next(dropped)
        del dropped  # a caller that stops early
        with reader_lease(db):
            assert ledger.serve_readers() == "lent"


def test_a_ledger_deleted_under_the_daemon_is_not_reopened_by_a_lend(tmp_path: Path, key: PrivateKey) -> None:
    """A lend opens the file by its path again: a path that no longer names the file we opened is refused first,
    and what the daemon held is saved beside it, as a commit would (fileguard.py)."""
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 5)
        os.unlink(db)
        with reader_lease(db), pytest.raises(LedgerGone) as gone:
            ledger.serve_readers()
        assert gone.value.rescued == str(tmp_path / "ledger.db.rescued")
        assert not db.exists()  # no new, empty ledger at the path
        with pytest.raises(LedgerGone):
            add(ledger, 1)
    with Ledger.open(tmp_path / "ledger.db.rescued", gateway_id=GW, key=None) as copy:
        assert copy.head()[0] == 5 and copy.verify(key.public_key()).ok


def test_a_reader_without_a_lease_left_open_is_tried_less_and_less_often(tmp_path: Path, key: PrivateKey) -> None:
    """Each reclaim such a reader foils holds the ledger's lock up to RECLAIM_BUSY_MS, appends waiting: the daemon
    (one look a second) tries after 1, 2, 4 ... looks, at most every RECLAIM_BACKOFF_MAX, and takes its file back
    within that many looks once the reader is gone."""
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 4)
        with leaseless_reader_of(ledger, db):
            tries = []
            for _ in range(100):
                assert ledger.serve_readers() is None and ledger.lent
                tries.append(ledger._lender.foiled if ledger._lender else -1)
            # tried at the first look, then after 1, 2, 4, 8, 16 and 32 looks skipped, then after every 32
            assert [i + 1 for i in range(100) if i == 0 or tries[i] != tries[i - 1]] == [1, 3, 6, 11, 20, 37, 70]
        looks = 1
        while ledger.serve_readers() != "reclaimed":
            looks += 1
            assert looks <= RECLAIM_BACKOFF_MAX + 1
        add(ledger, 1)
        assert ledger.verify(key.public_key()).ok



def test_the_daemons_look_each_second_is_due_only_when_a_reader_asks_or_the_ledger_is_lent(
        tmp_path: Path, key: PrivateKey) -> None:
    """`serve_due` is the look the daemon makes on its event loop (one flock test), hopping to a worker thread for
    `serve_readers` only when it says True: with no lease and the file its own, nothing is due."""
    db = tmp_path / "ledger.db"
    with open_writer(db, key) as ledger:
        add(ledger, 2)
        assert not ledger.serve_due() and ledger.serve_readers() is None
        with reader_lease(db):
            assert ledger.serve_due()
            assert ledger.serve_readers() == "lent"
            assert ledger.serve_due()  # lent: due until it is taken back
            assert ledger.serve_readers() is None
        assert ledger.serve_due()
        assert ledger.serve_readers() == "reclaimed"
        assert not ledger.serve_due()
    with open_writer(db, key, exclusive=False) as shared:
        assert not shared.serve_due()  # a writer that lends nothing: never due
    assert not ledger.serve_due()  # closed


# The daemon's ledger on a 512 KiB tmpfs of its own (`unshare -rm`), filled; then a reader asks for a lease.
FULL_DISK = """
import json, os, sys
from koto.signing import generate_key
from metering.errors import LedgerError
from metering.ledger import Ledger
from metering.ledger.lease import reader_lease
from tests.support.drafts import usage
folder, out = sys.argv[1], {}
db = os.path.join(folder, "ledger.db")
with Ledger.open(db, gateway_id="gw-lease", key=generate_key(), epoch=1_790_000_000, exclusive=True) as ledger:
    ledger.append([usage(i) for i in range(1, 6)])
    fill = open(os.path.join(folder, "fill"), "wb", buffering=0)
    try:
        while True:
            fill.write(bytes(4096))
    except OSError:
        pass
    try:
        ledger.append([usage(i) for i in range(6, 400)])
        out["append"] = "stored"
    except LedgerError as e:
        out["append"] = str(e)
    with reader_lease(db):
        out["serve"] = ledger.serve_readers()
        out["refused"], out["lent"], out["head"] = ledger.lend_refused, ledger.lent, ledger.head()[0]
        out["again"] = ledger.serve_readers()  # backing off: no second close and reopen at once
    fill.close()
    os.unlink(os.path.join(folder, "fill"))
    ledger.append([usage(6)])
    out["head_after"] = ledger.head()[0]
print(json.dumps(out))
"""


def test_a_lend_the_full_disk_refuses_keeps_the_ledger_to_the_daemon_which_writes_on(tmp_path: Path) -> None:
    """Lent, the file is in SQLite's normal locking mode, which needs the `-shm` file: a full disk refuses it ("disk
    I/O error"). The daemon must then keep its file exclusive and go on — not lose its connection, which made every
    call on the ledger fail and stopped the gateway in the chaos suite's full-disk fault, with an S0 meter's held
    records lost. The reader waits; the daemon tries again after a backoff and writes once there is space."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for a real full disk")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=512k tmpfs "{mnt}" && '
                           f'exec "{sys.executable}" -c "$0" "{mnt}"', FULL_DISK], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "full" in out["append"]  # the disk is really full: the batch was refused
    assert out["serve"] == "refused" and "disk I/O error" in out["refused"] and out["lent"] is False
    assert out["head"] == 5 and out["again"] is None
    assert out["head_after"] == 6  # space again: the same connection stores
