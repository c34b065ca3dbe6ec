"""`koto usage` answers billing questions: when a use ran, what it cost, whether it was entitled, whether and when
the cloud has it, where the gaps were and why, in exact integers for reconciling, with a warning when the ledger
does not verify and a plain error for a mistyped appliance."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.cli import main as koto
from gateway.state import StateDir
from metering.ledger import AckOutcome, Ledger
from metering.records import GapReason, RecordKind, TimeStatus, UsageRecord, usage_draft

TZ = ZoneInfo("Europe/Berlin")


def at(day: int, hh: int, mm: int) -> float:
    """Wall seconds of December `day` 2026, hh:mm Berlin time (the 1st is a Tuesday)."""
    return datetime(2026, 12, day, hh, mm, tzinfo=TZ).timestamp()


def rec(kind: RecordKind, fn: str, t0: float, t1: float, mwh: int, *, cycle: str = "", uses: int = 0,
        cost: int = 0, entitled: str = "", reason: GapReason | None = None, app: str = "washer") -> UsageRecord:
    return UsageRecord(kind, app, f"{app}.meter", fn, int(t0 * 1e9) % 10**15, int(t1 * 1e9) % 10**15, t0, t1,
                       "boot-1", TimeStatus.SYNCED, energy_mwh=0 if kind is RecordKind.CYCLE else mwh,
                       cycle_energy_mwh=mwh if kind is RecordKind.CYCLE else None,
                       duration_ms=round((t1 - t0) * 1000), cycle_id=cycle, uses=uses, currency="EUR",
                       cost_minor=cost, entitled=entitled, reason=reason or "")


def config(tmp: Path) -> Path:
    cfg = tmp / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw-support"\nstate_dir = "{tmp / "state"}"\ntimezone = "Europe/Berlin"\n\n'
                   + "".join(f'[[appliance]]\nid = "{app}"\nprofile = "{profile}"\n'
                             f'[appliance.sources.{app}-meter]\ndriver = "modbus"\nmodel = "sdm120"\n'
                             f'port = "/dev/ttyUSB0"\naddress = {addr}\nbaud = 9600\n'
                             for addr, (app, profile) in enumerate([("washer", "washing_machine"),
                                                                     ("dryer", "tumble_dryer")], 1)))
    return cfg


@pytest.fixture()
def gateway(tmp_path: Path) -> Path:
    """Tuesday 10:02–11:14 a washer cycle (wash, a 5-minute gap while the meter was unplugged, spin), acked by the
    cloud on Wednesday 08:03; Thursday a second cycle the cloud does not have yet."""
    sd = StateDir(tmp_path / "state")
    sd.provision()
    tue = [rec(RecordKind.FUNCTION, "wash", at(1, 10, 2), at(1, 10, 50), 500_000, cycle="c-tue", cost=40,
               entitled="yes"),
           rec(RecordKind.GAP, "", at(1, 10, 50), at(1, 10, 55), 10_123, cycle="c-tue",
               reason=GapReason.STALE),
           rec(RecordKind.FUNCTION, "spin", at(1, 10, 55), at(1, 11, 14), 299_877, cycle="c-tue", cost=25,
               entitled="yes"),
           rec(RecordKind.CYCLE, "", at(1, 10, 2), at(1, 11, 14), 810_000, cycle="c-tue", uses=1, entitled="yes")]
    thu = [rec(RecordKind.FUNCTION, "wash", at(3, 18, 0), at(3, 19, 0), 700_001, cycle="c-thu", cost=55,
               entitled="no"),
           rec(RecordKind.CYCLE, "", at(3, 18, 0), at(3, 19, 0), 700_001, cycle="c-thu", uses=1, entitled="no")]
    with Ledger.open(sd.ledger, gateway_id="gw-support", key=sd.private_key()) as ledger:
        stored = ledger.append([usage_draft(r, "household/washer") for r in tue])
        ledger.append([usage_draft(r, "household/washer") for r in thu])
        last = stored[-1]
        assert ledger.mark_acked(ledger.epoch, last.seq, last.hash, at_wall=at(2, 8, 3)) is AckOutcome.ADVANCED
    return config(tmp_path)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_each_use_shows_when_it_ran_its_energy_and_when_the_cloud_acked_it(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["usage", "--config", str(gateway), "--by", "cycle", "--appliance", "washer"]) == 0
    head, tue, thu = lines(capsys)
    assert head.split()[:3] == ["appliance", "ran", "(local"]
    assert "Tue 2026-12-01 10:02–11:14" in tue and "0.810 kWh" in tue and "yes" in tue
    assert tue.endswith("Wed 2026-12-02 08:03")
    assert "Thu 2026-12-03 18:00–19:00" in thu and thu.split()[-2:] == ["no", "no"]  # not entitled, not synced


def test_json_gives_exact_integers_and_iso_times_for_reconciling_with_the_cloud(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["usage", "--config", str(gateway), "--by", "cycle", "--json"]) == 0
    tue, thu = (json.loads(line) for line in lines(capsys))
    assert tue["cycle_id"] == "c-tue" and tue["energy_mwh"] == 810_000 and tue["cost_minor"] == {"EUR": 65}
    assert (tue["start"], tue["end"]) == ("2026-12-01T10:02:00+01:00", "2026-12-01T11:14:00+01:00")
    assert (tue["synced"], tue["synced_at"]) == ("yes", "2026-12-02T08:03:00+01:00")
    assert (thu["synced"], thu["synced_at"], thu["entitled"]) == ("no", None, "no")


def test_records_show_gaps_as_gaps_with_their_reason_in_exact_milliwatt_hours(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["usage", "--config", str(gateway), "--by", "record", "--mwh"]) == 0
    out = lines(capsys)
    gap = next(line for line in out if " gap " in line)
    assert "gap: stale" in gap and "10123 mWh" in gap and "10:50–10:55" in gap
    assert koto(["usage", "--config", str(gateway)]) == 0  # by function: the gap is its own row, not "(uses)"
    assert any(line.split()[1:3] == ["gap:", "stale"] for line in lines(capsys))


def test_a_ledger_that_does_not_verify_prints_its_figures_with_a_warning(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = gateway.parent / "state" / "ledger.db"
    with sqlite3.connect(db) as conn:  # someone edits an energy in place
        conn.execute("UPDATE records SET body = replace(body, '\"energy_mwh\":500000', '\"energy_mwh\":400000') "
                     "WHERE seq = 1")
    assert koto(["usage", "--config", str(gateway), "--by", "cycle"]) == 0
    out = capsys.readouterr()
    assert "warning: the ledger does not verify (FAILED at seq 1" in out.err and "koto verify" in out.err
    assert "Tue 2026-12-01" in out.out


def test_a_mistyped_appliance_is_an_error_naming_the_known_ones(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["usage", "--config", str(gateway), "--appliance", "wahser"]) == 2
    assert "koto: no appliance named 'wahser' (known: dryer, washer)" in capsys.readouterr().err
    # A configured appliance that has not run yet is not an error: it has no usage.
    assert koto(["usage", "--config", str(gateway), "--appliance", "dryer"]) == 0
    assert "no usage recorded for dryer" in capsys.readouterr().out


def test_a_ledger_from_before_ack_times_says_synced_without_a_time(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(gateway.parent / "state" / "ledger.db") as conn:
        conn.execute("DROP TABLE acks")
    assert koto(["usage", "--config", str(gateway), "--by", "cycle", "--json"]) == 0
    tue = json.loads(lines(capsys)[0])
    assert (tue["synced"], tue["synced_at"]) == ("yes", None)


def test_since_lists_only_the_uses_from_then_on_and_two_currencies_stay_apart(
        gateway: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--since` starts the listing at the first record from then on (found in the usage index); a use whose records
    were priced in two currencies shows both sums, never one added across them."""
    sd = StateDir(gateway.parent / "state")
    usd = replace(rec(RecordKind.FUNCTION, "dry", at(4, 9, 0), at(4, 9, 30), 100_000, cycle="c-fri", cost=7,
                      app="dryer"), currency="USD")
    eur = rec(RecordKind.FUNCTION, "cool", at(4, 9, 30), at(4, 9, 40), 20_000, cycle="c-fri", cost=3, app="dryer")
    with Ledger.open(sd.ledger, gateway_id="gw-support", key=sd.private_key()) as ledger:
        ledger.append([usage_draft(r, "household/dryer") for r in (usd, eur)])
    assert koto(["usage", "--config", str(gateway), "--by", "cycle", "--json", "--since", "2026-12-03"]) == 0
    thu, fri = (json.loads(line) for line in lines(capsys))
    assert (thu["cycle_id"], fri["cycle_id"]) == ("c-thu", "c-fri")
    assert fri["cost_minor"] == {"EUR": 3, "USD": 7} and thu["cost_minor"] == {"EUR": 55}
    assert koto(["usage", "--config", str(gateway), "--by", "cycle", "--since", "2026-12-05"]) == 0
    assert lines(capsys) == ["no usage recorded since 2026-12-05"]
