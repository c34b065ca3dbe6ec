"""The SD-card write budget, as behaviour: between billable events the daemon commits nothing to the ledger except an
S0 meter's checkpoint at `checkpoint_s` of the daemon's clock; a register meter is never checkpointed on its own.

The real `Gateway` and a real ledger file; time is a `ManualClock` moved one second per step, and each step does
what the daemon's meter loop and ticker do in that second (feed the readings, tick the meters, write a batch).
Commits are observed from a second connection (`PRAGMA data_version` changes when another connection commits),
which takes a reader lease and has the ledger lent to it, as the daemon's lending task would do within a second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from metering.ledger.lease import reader_lease

CHECKPOINT_S = 300
IMP_PER_KWH = 1000


def config(tmp: Path, interim_s: int = 3600, hold_s: int = 900, idle_interim_s: int | None = None,
           hold_use_s: int = 60) -> dict[str, Any]:
    idle = interim_s if idle_interim_s is None else idle_interim_s  # (standby slices at interim_s unless told)
    return {
        "gateway": {"id": "gw-b", "state_dir": str(tmp / "state"), "checkpoint_s": CHECKPOINT_S, "hold_s": hold_s,
                    "hold_use_s": hold_use_s},
        "appliance": [
            {"id": "boiler", "profile": "kettle", "energy": "reg", "interim_s": interim_s, "idle_interim_s": idle,
             "sources": {"reg": {"driver": "modbus", "model": "sdm120", "port": "/dev/ttyKOTO-none", "address": 1}}},
            {"id": "kettle", "profile": "kettle", "energy": "s0", "interim_s": interim_s, "idle_interim_s": idle,
             "sources": {"s0": {"driver": "s0", "pin": 17, "imp_per_kwh": IMP_PER_KWH}}},
        ],
    }


class Sim:
    """Two appliances' meters at 1 Hz: a register (mWh) meter and an S0 pulse count, at the power asked for."""

    def __init__(self, gw: Gateway, clock: ManualClock, db: Path) -> None:
        self.gw, self.clock = gw, clock
        self.reg_mwh = 5_000_000_000.0
        self.pulses = 0.0
        self.lease = reader_lease(db)
        assert gw.ledger.serve_readers() == "lent"  # the daemon's lending task, done here by hand
        self.reader = sqlite3.connect(db)
        self.version = self._version()
        self.commits: list[tuple[float, bool, set[str]]] = []  # (wall s, records added, checkpoints changed)
        self._seen = self._state()

    def _version(self) -> int:
        return int(self.reader.execute("PRAGMA data_version").fetchone()[0])

    def _state(self) -> tuple[int, dict[str, str]]:
        head = int(self.reader.execute("SELECT value FROM kv WHERE key='head_seq'").fetchone()[0])
        return head, dict(self.reader.execute("SELECT name, state FROM checkpoints").fetchall())

    def _reading(self, source: str, q: Quantity, v: int) -> Reading:
        now = self.clock.now()
        return Reading(source, now.mono_ns, now.wall, now.boot_id, q, v)

    def run(self, seconds: int, *, boiler_w: int = 0, kettle_w: int = 0) -> None:
        gw = self.gw
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.reg_mwh += boiler_w * 1000 / 3600  # W for one second, in mWh
            self.pulses += kettle_w / 3_600_000 * IMP_PER_KWH
            gw._feed(self._reading("reg", Quantity.POWER_MW, boiler_w * 1000))
            gw._feed(self._reading("reg", Quantity.ENERGY_MWH, int(self.reg_mwh)))
            gw._feed(self._reading("s0", Quantity.PULSES, int(self.pulses)))
            now = self.clock.now()
            for aid, meter in gw.meters.items():
                gw._take(aid, meter.tick(now))
            gw._flush_now()
            if (v := self._version()) != self.version:
                self.version = v
                head, cps = self._state()
                changed = {k for k, s in cps.items() if self._seen[1].get(k) != s}
                self.commits.append((now.wall, head > self._seen[0], changed))
                self._seen = (head, cps)

    def between_records(self) -> list[tuple[float, set[str]]]:
        return [(t, changed) for t, records, changed in self.commits if not records]


@contextmanager
def gateway(tmp_path: Path, **kw: int) -> Iterator[Sim]:
    from drivers.gpio.sim import mock_factory

    StateDir(tmp_path / "state").provision()
    clock = ManualClock()
    gw = Gateway(parse_config(config(tmp_path, **kw), file="koto.toml"), clock=clock,
                 backends={"pin_factory": mock_factory()}, sync_enabled=False)
    sim: Sim | None = None
    try:
        gw._lifecycle("start")
        gw._flush_now()
        sim = Sim(gw, clock, tmp_path / "state" / "ledger.db")
        yield sim
    finally:
        gw.ledger.close()
        if sim is not None:
            sim.reader.close()
            sim.lease.release()


def test_an_idle_gateway_commits_nothing_for_50_minutes(tmp_path: Path) -> None:
    with gateway(tmp_path) as sim:
        sim.run(CHECKPOINT_S + 60)  # the first readings: segments start, the S0 count's baseline is saved
        sim.commits.clear()
        sim.run(3000)  # (the standby segment's first interim record is due at 3600 s)
        assert sim.commits == []


def test_a_running_register_meter_is_never_checkpointed_between_its_records(tmp_path: Path) -> None:
    with gateway(tmp_path) as sim:
        sim.run(120)
        assert sim.gw.ledger.checkpoint("meter:boiler") is not None  # the first baseline is saved at once
        sim.commits.clear()
        sim.run(30 * 60, boiler_w=2000)  # the register climbs every second for half an hour
        assert sim.between_records() == []
        assert sim.commits  # the boil's start was written, with the boiler's checkpoint
        assert all("meter:boiler" in changed for _, records, changed in sim.commits if records)


def test_a_counting_s0_meter_is_checkpointed_only_at_its_cadence(tmp_path: Path) -> None:
    with gateway(tmp_path) as sim:
        sim.run(120)
        sim.run(1, kettle_w=2000)
        sim.commits.clear()  # the boil's start (records)
        sim.run(60 * 60, kettle_w=2000, boiler_w=2000)  # an hour of pulses (2 kW: a pulse every 1.8 s)
        cadence = sim.between_records()
        # one commit per checkpoint_s (the first also carries the boil's held records)
        assert 60 * 60 // CHECKPOINT_S - 1 <= len(sim.commits) <= 60 * 60 // CHECKPOINT_S
        assert len(cadence) >= len(sim.commits) - 1
        assert all(changed == {"meter:kettle"} for _, changed in cadence)  # the count only (boiler: register)
        times = [t for t, _, _ in sim.commits]
        assert all(b - a >= CHECKPOINT_S for a, b in pairwise(times))
        state = sim.gw.ledger.checkpoint("meter:kettle")
        assert state is not None
        behind = int(sim.pulses) - int(state["authority"]["last_raw"])
        assert 0 <= behind <= CHECKPOINT_S * 2000 / 3_600_000 * IMP_PER_KWH + 1  # the power-cut window


def test_an_s0_meter_that_starts_counting_is_written_within_checkpoint_s_of_its_first_pulse_not_at_it(
        tmp_path: Path) -> None:
    """After a quiet spell the count's first pulse does not cost a commit of its own: the state waits for the next
    batch, at most `checkpoint_s` (100 W below the kettle's threshold: pulses, no record)."""
    with gateway(tmp_path) as sim:
        sim.run(120)
        sim.run(3 * CHECKPOINT_S)  # nothing moves
        sim.commits.clear()
        sim.run(CHECKPOINT_S, kettle_w=100)  # a pulse every 36 s from the first
        first = sim.clock.now().wall - CHECKPOINT_S + 36
        assert sim.commits == []
        sim.run(60, kettle_w=100)
        assert [changed for _, changed in sim.between_records()] == [{"meter:kettle"}]
        assert next(t for t, _ in sim.between_records()) - first <= CHECKPOINT_S + 1
        state = sim.gw.ledger.checkpoint("meter:kettle")
        assert state is not None and int(state["authority"]["last_raw"]) >= CHECKPOINT_S * 100 // 36_000


def test_records_wait_for_the_next_transaction_for_at_most_hold_s(tmp_path: Path) -> None:
    """Two appliances' interims fall at different moments (the kettle's standby segment began at the start, the
    boiler's boil 2 minutes later); held, they share one transaction per `hold_s` instead of one each. Interim
    slices are segment records: `hold_use_s` (60 s here) does not hurry them."""
    with gateway(tmp_path, interim_s=600, hold_s=600, hold_use_s=60) as sim:
        sim.run(120)
        sim.run(1, boiler_w=2000)
        sim.commits.clear()
        head0 = sim.gw.ledger.head()[0]
        sim.run(2 * 3600, boiler_w=2000)
        commits = [t for t, records, _ in sim.commits if records]
        records = sim.gw.ledger.head()[0] - head0
        assert records >= 2 * (2 * 3600 // 600) - 2  # both appliances' interims were written...
        assert len(commits) <= 2 * 3600 // 600 + 1  # ...in about half as many transactions
        for (end_ms,) in sim.reader.execute("SELECT t_end_ms FROM records WHERE seq > ?", (head0,)):
            written = min(t for t in commits if t >= end_ms / 1000)
            assert written - end_ms / 1000 <= 600 + 2  # none held longer than hold_s (+ the 1 s steps)


def test_an_idle_gateway_at_the_default_cadences_commits_nothing_for_5_hours(tmp_path: Path) -> None:
    """Idle standby is sliced every `idle_interim_s` (6 h by default), not every `interim_s` (15 minutes): an idle
    register meter writes nothing, and an idle S0 meter nothing but its baseline, for hours."""
    with gateway(tmp_path, interim_s=900, hold_s=60, idle_interim_s=21_600) as sim:
        sim.run(CHECKPOINT_S + 60)
        sim.commits.clear()
        sim.run(5 * 3600)
        assert sim.commits == []


def test_a_closed_use_is_written_within_hold_use_s_with_the_segments_held_before_it(tmp_path: Path) -> None:
    """Segment records wait up to `hold_s` (900 s) to share a transaction; a closed use (its `cycle` record) is
    written within `hold_use_s` (60 s) of being made, and takes every record held before it into that transaction."""
    with gateway(tmp_path, interim_s=900, hold_s=900, hold_use_s=60, idle_interim_s=21_600) as sim:
        sim.run(CHECKPOINT_S + 60)
        sim.commits.clear()
        for _ in range(3):  # three boils, ten minutes apart: each a use (boil segment, standby segment, cycle)
            sim.run(150, boiler_w=2000)
            made = None
            for _ in range(450):
                sim.run(1)
                if made is None and any(d.data.get("kind") == "cycle" for d in sim.gw._pending):
                    made = sim.clock.now().wall  # the meter closed the use (after its end dwell and settling)
            assert made is not None
            written = [t for t, records, _ in sim.commits if records and t >= made]
            assert written and written[0] - made <= 60 + 1  # hold_use_s (+ the 1 s step)
            assert not sim.gw._pending  # the segments held before it went with it
        rows = sim.reader.execute("SELECT kind FROM records WHERE appliance='boiler'").fetchall()
        assert rows.count(("cycle",)) == 3 and rows.count(("function",)) >= 6
        assert len([c for c in sim.commits if c[1]]) == 3  # one transaction per use: its segments and its summary


def test_hold_s_0_writes_every_batch_whatever_hold_use_s_says(tmp_path: Path) -> None:
    with gateway(tmp_path, interim_s=600, hold_s=0, hold_use_s=60) as sim:
        sim.run(120)
        sim.run(1, boiler_w=2000)
        sim.commits.clear()
        head0 = sim.gw.ledger.head()[0]
        sim.run(3600, boiler_w=2000)
        commits = [t for t, records, _ in sim.commits if records]
        for (end_ms,) in sim.reader.execute("SELECT t_end_ms FROM records WHERE seq > ?", (head0,)):
            assert min(t for t in commits if t >= end_ms / 1000) - end_ms / 1000 <= 2  # the next 1 s step
