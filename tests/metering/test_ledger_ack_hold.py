"""A held ack (`Ledger.mark_acked(hold=True)`): counted at once, written with the next commit, never pruned on.

Real ledger files; what the file holds is read from a second connection, as another process would read it, and
`PRAGMA data_version` on that connection changes exactly when another connection has committed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from koto.signing import generate_key
from metering.ledger import AckOutcome, Ledger
from tests.support.drafts import T0, usage

DAY = 86400.0


class FileView:
    """The ledger file as another process sees it."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db)

    def version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def acked(self) -> int:
        return int(self.conn.execute("SELECT value FROM kv WHERE key='acked_through'").fetchone()[0])

    def ack_rows(self) -> list[tuple[int, int]]:
        return [(int(t), int(a)) for t, a in self.conn.execute("SELECT through, at_ms FROM acks ORDER BY through")]


@pytest.fixture
def led(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "l.db", gateway_id="gw", key=generate_key())


def test_a_held_ack_counts_at_once_commits_nothing_and_rides_with_the_next_append(led: Ledger) -> None:
    s = led.append([usage(i, t_end=T0 + i) for i in range(10)])
    view = FileView(led.path)
    v0 = view.version()
    assert led.mark_acked(led.epoch, 6, s[5].hash, at_wall=T0 + 100, hold=True) is AckOutcome.ADVANCED
    assert led.mark_acked(led.epoch, 8, s[7].hash, at_wall=T0 + 101, hold=True) is AckOutcome.ADVANCED
    assert view.version() == v0 and view.acked() == 0 and view.ack_rows() == []  # no commit of its own
    # ...but this process counts it at once: the sync's window, the backlog, status
    assert led.acked_through() == 8 and led.acked_through(written=True) == 0 and led.held_ack() == 8
    assert led.unacked_count() == 2 and [r.seq for r in led.unacked()] == [9, 10]
    assert led.last_ack() == (8, T0 + 101) and led.synced_at(5) == T0 + 100 and led.synced_at(9) is None
    assert led.mark_acked(led.epoch, 7, s[6].hash, hold=True) is AckOutcome.ALREADY  # below the held point
    assert led.mark_acked(led.epoch, 9, "0" * 64, hold=True) is AckOutcome.MISMATCH  # verified as before
    assert led.held_ack() == 8

    led.append([usage(10, t_end=T0 + 10)])
    assert view.version() != v0  # the records' commit...
    assert view.acked() == 8 and view.ack_rows() == [(6, 100_000 + round(T0 * 1000)),
                                                     (8, 101_000 + round(T0 * 1000))]  # ...carried the ack
    assert led.held_ack() == 0 and led.acked_through(written=True) == 8
    led.close()


def test_an_append_with_nothing_to_write_leaves_the_ack_held(led: Ledger) -> None:
    s = led.append([usage(0)], checkpoints={"m": {"a": 1}})
    view = FileView(led.path)
    v0 = view.version()
    led.mark_acked(led.epoch, 1, s[0].hash, hold=True)
    assert led.append([], checkpoints={"m": {"a": 1}}) == []  # an unchanged checkpoint: no transaction
    assert view.version() == v0 and view.acked() == 0 and led.held_ack() == 1
    led.append([], checkpoints={"m": {"a": 2}})  # a checkpoint commit carries it too
    assert view.acked() == 1 and led.held_ack() == 0
    led.close()


def test_write_ack_and_close_write_a_held_ack_in_a_commit_of_their_own(led: Ledger) -> None:
    s = led.append([usage(i) for i in range(3)])
    view = FileView(led.path)
    assert led.write_ack() is False  # nothing held: nothing written
    led.mark_acked(led.epoch, 2, s[1].hash, at_wall=T0, hold=True)
    v0 = view.version()
    assert led.write_ack() is True
    assert view.version() != v0 and view.acked() == 2 and view.ack_rows() == [(2, round(T0 * 1000))]
    led.mark_acked(led.epoch, 3, s[2].hash, hold=True)
    assert view.acked() == 2
    led.close()  # a clean stop
    assert view.acked() == 3


def test_an_ack_written_at_once_takes_the_held_ones_rows_along(led: Ledger) -> None:
    s = led.append([usage(i) for i in range(3)])
    led.mark_acked(led.epoch, 1, s[0].hash, at_wall=T0 + 1, hold=True)
    assert led.mark_acked(led.epoch, 2, s[1].hash, at_wall=T0 + 2) is AckOutcome.ADVANCED  # not held
    view = FileView(led.path)
    assert view.acked() == 2 and [t for t, _ in view.ack_rows()] == [1, 2] and led.held_ack() == 0
    led.close()


def test_prune_goes_by_the_written_ack_never_a_held_one(led: Ledger) -> None:
    s = led.append([usage(i, t_end=T0 + i) for i in range(30)])
    led.mark_acked(led.epoch, 10, s[9].hash)  # written
    led.mark_acked(led.epoch, 25, s[24].hash, hold=True)  # held
    assert led.prune(1, T0 + 10 * DAY) == 10  # up to the written ack, not one further
    assert led.anchor()[0] == 11 and led.acked_through() == 25
    assert led.prune(1, T0 + 10 * DAY) == 0
    led.write_ack()
    assert led.prune(1, T0 + 10 * DAY) == 15
    assert led.anchor()[0] == 26
    led.close()
