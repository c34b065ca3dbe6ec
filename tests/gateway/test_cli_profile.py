"""`koto profile check/suggest` and the power trace behind them: the daemon's RAM ring written to the runtime folder
(tmpfs) on request, the trace format, the replay through the real meter, the plot, and suggestions that are
checked by replaying them."""

from __future__ import annotations

import asyncio
import tomllib
import xml.dom.minidom
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.power_log import REQUEST_FILE, PowerLog, PowerRing, TracePoint, format_trace, parse_trace, read_trace
from gateway.profile_replay import replay
from gateway.profile_suggest import apply, suggest
from gateway.state import StateDir
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.profile import builtin_profile, parse_profile
from tests.support.appliance_traces import dishwasher, oven, washer

T0 = 1_764_921_600.0
BOOT = "00000000-0000-4000-8000-000000000001"


def _write(path: Path, watts: tuple[float, ...]) -> Path:
    path.write_text(format_trace([TracePoint(T0 + i, round(w * 1000)) for i, w in enumerate(watts)], "test"))
    return path


def test_the_ring_keeps_the_newest_readings_in_order_with_the_signals() -> None:
    ring = PowerRing(size=5)
    for i in range(8):
        ring.add(T0 + i, i * 1000)
    ring.add_signal(T0 + 6.5, "mode", "cool")
    ring.add_signal(T0 + 1, "mode", "heat")  # older than what the ring still holds: dropped
    pts = ring.points()
    assert [p.power_mw for p in pts if p.power_mw is not None] == [3000, 4000, 5000, 6000, 7000]
    assert [(p.t, p.signal, p.value) for p in pts if p.power_mw is None] == [(T0 + 6.5, "mode", "cool")]
    assert len(ring) == 5


def test_the_trace_format_round_trips_and_reads_iso_times_and_bare_columns() -> None:
    pts = [TracePoint(T0, 12_300), TracePoint(T0 + 0.5, None, "mode", "cool"), TracePoint(T0 + 1, 0)]
    assert list(parse_trace(format_trace(pts, "two\nlines").splitlines())) == pts
    bare = ["t,power_w", "2025-12-05T08:00:00Z,2000", "2025-12-05T08:00:01+00:00,1999.5"]
    assert [(p.t, p.power_mw) for p in parse_trace(bare)] == [(T0, 2_000_000), (T0 + 1, 1_999_500)]


def test_a_bad_trace_line_is_one_line_naming_file_and_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.csv"
    bad.write_text("t,power_w\n1764921600,12\n1764921601,lots\n")
    assert koto(["profile", "check", "washer", "--profile", "washing_machine", "--trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"koto: {bad}: line 3: expected t") and "\n" not in err
    (tmp_path / "nohead.csv").write_text("1764921600,12\n")
    with pytest.raises(Exception, match="header"):
        read_trace(tmp_path / "nohead.csv")


def test_pulses_alone_give_the_mean_power_between_counts(tmp_path: Path) -> None:
    log = PowerLog(tmp_path, {"kettle": EnergySpec("pulses", "k", imp_per_kwh=1000)})
    for i, count in enumerate((0, 1, 2)):  # one pulse (1 Wh) every 1.8 s: 2000 W
        log.add("kettle", Reading("k", i * 1_800_000_000, T0 + i * 1.8, BOOT, Quantity.PULSES, count))
    assert [p.power_mw for p in log.rings["kettle"].points()] == [2_000_000, 2_000_000]


async def test_the_daemon_writes_each_appliance_trace_to_the_runtime_folder_on_request(tmp_path: Path) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    cfg = {"gateway": {"id": "gw-prof", "state_dir": str(tmp_path / "state"), "batch_ms": 20},
           "tariff": {"id": "t", "version": 1, "currency": "EUR", "exponent": 2,
                      "rates": [{"match": "*/*", "per_kwh": "0.40"}], "windows": []},
           "appliance": [{"id": "kettle", "profile": "kettle",
                          "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 20_000}}}]}
    run_dir = tmp_path / "run"
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False, runtime_dir=run_dir)
    assert gw.power_log is not None
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    boil = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    try:
        await asyncio.sleep(1.5)
        run_dir.mkdir(exist_ok=True)
        (run_dir / REQUEST_FILE).touch()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not (run_dir / REQUEST_FILE).exists():
                break
        assert not (run_dir / REQUEST_FILE).exists()  # the daemon answered
        pts = read_trace(run_dir / "power-kettle.csv")
        watts = sorted(p.power_mw or 0 for p in pts)
        assert len(watts) > 10 and 1_500_000 < watts[len(watts) // 2] < 3_000_000
        assert not any(p.name.startswith("power") for p in (tmp_path / "state").iterdir())  # never the SD card
    finally:
        boil.cancel()
        stop.set()
        await run


def test_check_plots_the_functions_and_counts_the_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _write(tmp_path / "w.csv", washer("belt-7kg", "quick30").watts)
    svg = tmp_path / "w.svg"
    assert koto(["profile", "check", "washer", "--profile", "washing_machine", "--trace", str(trace),
                 "--svg", str(svg), "--width", "80"]) == 0
    out = capsys.readouterr().out
    assert "H heat" in out and "S spin" in out and "R rinse" in out
    assert "uses: 1" in out
    letters = next(line for line in out.splitlines() if line.startswith(" " * 8 + "|") and "H" in line)
    assert letters.index("H") < letters.index("S") < letters.rindex("R")  # heat, then spin, then the rinses
    doc = xml.dom.minidom.parse(str(svg))
    assert doc.getElementsByTagName("polyline") and "spin" in svg.read_text()


def test_check_without_a_trace_or_a_daemon_says_what_to_do(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["profile", "check", "washer", "--profile", "washing_machine", "--runtime-dir",
                 str(tmp_path)]) == 2
    assert "no power trace (is the daemon running" in capsys.readouterr().err


def test_suggest_finds_the_thermostat_pauses_and_its_toml_holds_the_bake_in_one_heat(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = oven("fan-oven-2kW")
    twitchy = parse_profile({"name": "my_oven", "max_power_w": 3700, "cycle": {
        "start_above_w": 500, "end_below_w": 10, "end_for_s": 180}, "function": [
        {"name": "heat", "on_above_w": 500, "off_below_w": 300, "min_on_s": 5, "min_off_s": 10},
        {"name": "fan", "on_above_w": 10, "on_below_w": 299, "min_on_s": 5},
        {"name": "standby", "on_below_w": 6}]})
    tl = replay([TracePoint(T0 + i, round(w * 1000)) for i, w in enumerate(t.watts)], twitchy)
    changes = suggest(tl)
    assert any(c.target == "heat" and c.key == "min_off_s" and c.new > 150 for c in changes)
    fixed = replay(tl.points, apply(twitchy, changes))
    heat_runs = [s for s in fixed.spans if s.function == "heat"]
    assert len(heat_runs) == 1 and len([s for s in tl.spans if s.function == "heat"]) > 10
    # The command prints the same as TOML that loads as a profile.
    trace = _write(tmp_path / "o.csv", t.watts)
    prof = tmp_path / "my_oven.toml"
    prof.write_text(
        'name = "my_oven"\nmax_power_w = 3700\n[[function]]\nname = "heat"\non_above_w = 500\noff_below_w = 300\n'
        'min_on_s = 5\nmin_off_s = 10\n[[function]]\nname = "fan"\non_above_w = 10\non_below_w = 299\n'
        'min_on_s = 5\n[[function]]\nname = "standby"\non_below_w = 6\n[cycle]\nstart_above_w = 500\n'
        'end_below_w = 10\nend_for_s = 180\n')
    assert koto(["profile", "suggest", "oven", "--profile", str(prof), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "min_off_s = " in out and "# was 10" in out
    assert parse_profile(tomllib.loads(out)).functions[0].min_off_ns > 150 * 10**9


def test_suggest_leaves_a_fitting_profile_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _write(tmp_path / "o.csv", oven("top-bottom-2.2kW").watts)
    assert koto(["profile", "suggest", "oven", "--profile", "oven", "--trace", str(trace)]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert builtin_profile("oven").functions[0].min_off_ns == 180 * 10**9


def test_suggest_lets_the_uses_of_a_machine_resting_above_standby_end() -> None:
    """A washer whose electronics rest at ~5 W (over the built-in's 3.5 W use end): its use never ends, and the
    rest would be billed as fill. The suggestions move standby, the bands that hold there and the use's end above
    the rest level, and the use ends."""
    t = washer("old-6kg", "quick30")
    watts = [w + 3.0 for w in (*t.watts, *(t.watts[-1],) * 1500)]
    prof = builtin_profile("washing_machine")
    tl = replay([TracePoint(T0 + i, round(w * 1000)) for i, w in enumerate(watts)], prof)
    assert tl.open_use and not tl.uses
    changes = suggest(tl)
    assert {(c.target, c.key) for c in changes} >= {("standby", "on_below_w"), ("cycle", "end_below_w"),
                                                   ("fill", "off_below_w")}
    after = replay(tl.points, apply(prof, changes))
    assert len(after.uses) == 1 and not after.open_use
    assert after.seconds_by_function()["standby"] > 1500


def test_suggest_shortens_a_use_end_that_waits_far_longer_than_any_pause() -> None:
    """The dishwasher's use used to stay open 30 minutes after its programme: the longest quiet stretch a use went
    on after (an eco soak) tells how long the end needs to wait."""
    from importlib import resources

    text = (resources.files("metering") / "profiles" / "dishwasher.toml").read_text()
    late = parse_profile(tomllib.loads(text.replace("end_for_s = 120", "end_for_s = 1800").replace(
        "end_below_w = 2.5", "end_below_w = 5")))
    t = dishwasher("fan-dry-60cm", "eco50")  # drying with a fan: the use is on until the fan stops
    tl = replay([TracePoint(T0 + i, round(w * 1000)) for i, w in enumerate(t.watts)], late)
    assert tl.open_use and not tl.uses  # the trace ends 15 minutes after the programme: the use is still open
    changes = suggest(tl)
    end = next(c for c in changes if (c.target, c.key) == ("cycle", "end_for_s"))
    assert 240 < end.new < 600  # above the eco soak pauses (4 minutes at the electronics' 3.5 W)
    after = replay(tl.points, apply(late, changes))
    assert len(after.uses) == 1 and not after.open_use


def test_check_reads_the_daemon_trace_of_a_configured_appliance_since_a_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw"\nstate_dir = "{tmp_path / "state"}"\ntimezone = "UTC"\n'
                   '[[appliance]]\nid = "washer"\nprofile = "washing_machine"\n'
                   '[appliance.sources.k]\ndriver = "s0"\npin = 17\nimp_per_kwh = 1000\n')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t = washer("belt-7kg", "quick30")
    _write(run_dir / "power-washer.csv", (0.5,) * 3600 + t.watts)  # an idle hour, then the programme
    since = datetime.fromtimestamp(T0 + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert koto(["profile", "check", "washer", "--config", str(cfg), "--runtime-dir", str(run_dir),
                 "--since", since]) == 0
    out = capsys.readouterr().out
    assert f"{len(t.watts)} readings from {run_dir / 'power-washer.csv'}" in out and "uses: 1" in out
    assert koto(["profile", "check", "dryer", "--config", str(cfg), "--runtime-dir", str(run_dir)]) == 2
    assert "no appliance named 'dryer' (known: washer)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["washing_machine", "dishwasher"])
def test_a_written_out_profile_keeps_the_rule_that_ends_a_use_left_on(name: str) -> None:
    """`koto profile suggest` and `koto learn` write the whole profile out as TOML: the [cycle] left-on rule
    (left_on_below_w / left_on_for_s) must survive it, or a machine left on after its programme never ends its use
    again under the saved profile."""
    from gateway.profile_suggest import profile_toml

    prof = builtin_profile(name)
    assert prof.cycle is not None and prof.cycle.left_on_mw
    again = parse_profile(tomllib.loads(profile_toml(prof, [])), file="(written)")
    assert again.cycle == prof.cycle


def test_a_suggestion_that_raises_the_end_level_moves_the_left_on_rule_along_instead_of_being_dropped() -> None:
    """metering/profile.py refuses a left-on level below end_below_w or a left-on dwell shorter than end_for_s; a
    suggested change past either used to make an impossible profile, and the suggestion was silently dropped."""
    from gateway.profile_suggest import Change, _keep_left_on

    prof = builtin_profile("washing_machine")
    assert prof.cycle is not None
    raise_end = [Change("cycle", "end_below_w", 3.5, 9.0, "rests at 6 W"),
                 Change("cycle", "start_above_w", 8.0, 13.5, "a use must start above where it ends"),
                 Change("cycle", "end_for_s", 90.0, 2400.0, "a long pause")]
    kept = _keep_left_on(prof, [], raise_end)
    cyc = apply(prof, kept).cycle  # parsed like any profile file: an impossible one raises
    assert cyc is not None and (cyc.end_mw, cyc.left_on_mw) == (9000, 9000)
    assert cyc.left_on_ns == cyc.end_ns == 2400 * 10**9
