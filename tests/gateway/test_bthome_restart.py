"""An encrypted BTHome advert recorded by someone and played back after the gateway restarted is refused, as it would
have been before the restart (bthome.io/encryption: the counter "must increase compared against last time").

The production `Gateway` on a real ledger file, a BTHome plug's adverts encrypted as the plug encrypts them
(`build_service_data`, which reproduces bthome-ble's published vector) entering through bleak's front end and
bthome-ble (`ReplayBackend`), and real restarts: a clean stop (what SIGTERM does), or a crash (the run cancelled:
nothing more reaches the ledger than what its last batch committed), then a new `Gateway` on the same state folder.
A household power cut restarts the plug's count and the Pi together: the Pi's clock (`ManualClock`) then starts a
new boot, and the plug, counting again from 0, is read at once; an advert recorded before the cut is still refused.
The `koto bthome forget-counter` command runs as an installer types it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.ble import BTHomeSource, key_id
from drivers.ble_backend import ReplayAdvert, ReplayBackend
from drivers.bthome import build_service_data
from gateway.bthome_counters import CHECKPOINT
from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.clock import Clock, ManualClock, SystemClock
from tests.support.slow import scaled

PLUG = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def config(tmp: Path) -> dict[str, Any]:
    return {"gateway": {"id": "gw-ble", "state_dir": str(tmp / "state"), "batch_ms": 20},
            "appliance": [{"id": "kettle", "profile": "kettle",
                           "sources": {"plug": {"driver": "bthome", "address": PLUG, "bindkey": KEY.hex()}}}]}


def write_config(tmp: Path) -> Path:
    """The same gateway as `config`, as the file an installer keeps in /etc/koto/koto.toml."""
    toml = tmp / "koto.toml"
    toml.write_text(f'[gateway]\nid = "gw-ble"\nstate_dir = "{tmp / "state"}"\n\n[[appliance]]\nid = "kettle"\n'
                    f'profile = "kettle"\n\n[appliance.sources.plug]\ndriver = "bthome"\naddress = "{PLUG}"\n'
                    f'bindkey = "{KEY.hex()}"\n')
    return toml


def advert(counter: int) -> ReplayAdvert:
    """What the plug sends as its `counter`-th advert: standby power and its energy register at `counter` Wh, so a
    replayed older advert would show the register lower than it is."""
    return ReplayAdvert(PLUG, build_service_data(packet_id=counter % 256, power_mw=1_500, energy_mwh=counter * 1000,
                                                 bindkey=KEY, mac=PLUG, counter=counter))


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(scaled(10)):
        while not cond():  # noqa: ASYNC110 - nothing in the gateway signals what the test waits for
            await asyncio.sleep(0.01)


class Gw:
    """One run of the gateway on the test's state folder, with the plug in range."""

    def __init__(self, tmp: Path, clock: Clock | None = None) -> None:
        clock = clock or SystemClock()
        self.ble = ReplayBackend(clock=clock)
        self.gw = Gateway(parse_config(config(tmp), file="koto.toml"), clock=clock, backends={"ble": self.ble},
                          sync_enabled=False)
        self._stop = asyncio.Event()
        self._run = asyncio.create_task(self.gw.run(self._stop))

    @property
    def plug(self) -> BTHomeSource:
        src = self.gw.sources["plug"].source
        assert isinstance(src, BTHomeSource)
        return src

    async def hears(self, *adverts: ReplayAdvert) -> None:
        """The plug (or someone else, in its name) sends `adverts`; returns once the source has decoded them all and
        the meter has taken what they gave."""
        await until(lambda: self.gw.sources["plug"].source is not None)
        heard = self.plug.adverts
        for a in adverts:
            self.ble.replay.push(a)
        # Decoded, and every reading they gave taken by the meter (from the source's queue to the gateway's to the
        # meter, with no wait in between), then a few of the meter loop's batches (batch_ms 20).
        await until(lambda: self.plug.adverts == heard + len(adverts) and self.plug._queue.empty()
                    and self.gw._queue.empty())
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """A clean stop, as on SIGTERM (systemctl restart koto, an upgrade, a reboot)."""
        self._stop.set()
        await self._run

    async def crash(self) -> None:
        """Gone at once (kill -9, a power cut): the ledger keeps what its last batch committed, nothing more."""
        self._run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._run


@pytest.fixture
def state(tmp_path: Path) -> Path:
    StateDir(tmp_path / "state").provision()
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """`koto ARGS...` in this process: (exit code, stdout, stderr). The command sets up logging to this test's
    captured stderr; the root logger's handlers are put back afterwards, so later tests do not log into it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = koto(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_an_advert_recorded_before_a_restart_and_played_back_after_it_is_refused(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Gw(state)
    await first.hears(advert(1000), advert(1001), advert(1002))  # someone in range records advert 1001
    assert first.plug.health.errors == {}
    await first.stop()

    again = Gw(state)
    await again.hears(advert(1001), advert(1003))  # the recording played back, then the plug's own next advert
    assert again.plug.health.errors == {"replayed_counter": 1}
    assert again.plug.health.readings == 3  # power, energy and RSSI of advert 1003 only: the replay gave nothing
    assert again.gw.meters["kettle"].last_raw == 1_003_000  # the register, never seen going back to 1001 Wh
    await again.stop()
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(said) == 1 and "1001 is below the last one read from it, 1002" in said[0], said


async def test_the_advert_read_last_before_the_restart_heard_again_is_a_repeat_not_an_alarm(state: Path) -> None:
    """A device sends each advert several times and BlueZ reports them again: after a quick restart the first thing
    heard may be the advert read last before it. It was read once; it is dropped as a repeat, without an error."""
    first = Gw(state)
    await first.hears(advert(1000), advert(1001))
    await first.stop()

    again = Gw(state)
    await again.hears(advert(1001), advert(1002))
    assert (again.plug.health.errors, again.plug.duplicates, again.plug.health.readings) == ({}, 1, 3)
    await again.stop()


async def test_after_a_crash_the_gateway_resumes_from_the_counter_its_last_batch_wrote(state: Path) -> None:
    """The counter goes to the SD card only with the batches the daemon writes anyway, never for an advert alone.
    A crash therefore leaves a window, and this is it: an advert sent after the last batch and before the crash can
    be played back once after the restart, until the plug's own next advert closes it again."""
    from gateway.bthome_counters import CHECKPOINT

    first = Gw(state)
    await first.hears(advert(1000))  # the register's first value: the meter's baseline is written with a batch
    await until(lambda: first.gw.ledger.checkpoint(CHECKPOINT) is not None)
    await first.hears()  # (the batch's bookkeeping done)
    batches = first.gw.stats.batches
    await first.hears(advert(1001), advert(1002))  # recorded by someone
    assert first.gw.stats.batches == batches  # adverts alone wrote nothing
    kept = first.gw.ledger.checkpoint(CHECKPOINT)
    assert kept is not None and (kept["devices"][PLUG]["counter"], kept["devices"][PLUG]["key"]) == (
        1000, first.plug._key_id)
    await first.crash()

    again = Gw(state)
    await again.hears(advert(999), advert(1000))  # older than the last batch, and the one it holds: nothing
    assert (again.plug.health.errors, again.plug.duplicates, again.plug.health.readings) == (
        {"replayed_counter": 1}, 1, 0)
    await again.hears(advert(1001))  # inside the window: read once
    assert again.plug.health.readings == 3
    await again.hears(advert(1003), advert(1002))  # the plug's own next advert closes it
    assert again.plug.health.errors == {"replayed_counter": 2} and again.plug.health.readings == 6
    await again.stop()


async def test_a_clean_stop_writes_the_last_counter_with_its_last_batch(state: Path) -> None:
    from gateway.bthome_counters import CHECKPOINT
    from metering.ledger import Ledger

    first = Gw(state)
    await first.hears(*(advert(c) for c in range(1000, 1010)))
    await first.stop()
    with Ledger.open(state / "state" / "ledger.db", gateway_id="gw-ble", key=None) as ledger:
        kept = ledger.checkpoint(CHECKPOINT)
    assert kept is not None and kept["devices"][PLUG]["counter"] == 1009


async def test_a_device_reset_while_the_gateway_did_not_hear_it_is_read_again_after_forget_counter(
        state: Path, cli: Callable[..., tuple[int, str, str]], caplog: pytest.LogCaptureFixture) -> None:
    """A plug whose count restarted from 0 (a new battery, re-flashed) while the gateway was off for its first 100
    adverts cannot be told from a replay: it is refused, and the journal says what to do. Doing it (the gateway
    stopped) reads it again."""
    toml = write_config(state)
    first = Gw(state)
    await first.hears(advert(5000), advert(5001))
    await first.stop()

    again = Gw(state)
    await again.hears(advert(150))  # the reset plug, 150 adverts later
    assert again.plug.health.errors == {"replayed_counter": 1}
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "sudo -u koto koto bthome forget-counter plug" in said and "once its counter passes 5001" in said
    forget = ("bthome", "forget-counter", "plug", "--config", str(toml))
    rc, _, err = cli(*forget)
    assert rc == 2 and "the gateway is running" in err and "stop it first (sudo systemctl stop koto)" in err
    assert err.startswith("koto: ") and err.count("\n") == 1  # one line, as every koto error
    await again.stop()

    rc, out, _ = cli(*forget)
    assert rc == 0 and "forgot encryption counter 5001 of A4:C1:38:8D:18:B2" in out
    rc, out, _ = cli(*forget)
    assert rc == 0 and "nothing to forget" in out

    third = Gw(state)
    await third.hears(advert(151), advert(152))
    assert (third.plug.health.errors, third.plug.health.readings) == ({}, 6)
    await third.stop()


def test_forget_counter_names_the_bthome_sources_it_knows_and_takes_an_address(
        state: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    toml = write_config(state)
    rc, _, err = cli("bthome", "forget-counter", "kettle-plug", "--config", str(toml))
    assert (rc, err) == (2, "koto: no bthome source named 'kettle-plug' (known: plug)\n")
    rc, out, _ = cli("bthome", "forget-counter", PLUG.lower(), "--config", str(toml))
    assert rc == 0 and f"no ledger yet, so no counter is kept for {PLUG}" in out


async def test_a_device_that_restarts_its_count_while_heard_is_read_on_and_the_journal_says_so(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bthome-ble's rule, kept: a counter below 100 after a higher one is the device counting again from 0 (a new
    battery, a power cut that also restarted the gateway), read at once; its new count is what is kept."""
    caplog.set_level(logging.WARNING)
    first = Gw(state)
    await first.hears(advert(5000))
    await first.stop()

    again = Gw(state)
    await again.hears(advert(0), advert(1), advert(2))
    assert (again.plug.health.errors, again.plug.health.readings) == ({}, 9)
    await again.stop()
    assert any("counts its encryption counter again from 0 (it was at 5000)" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------
# A household power cut: the plug and the Pi lose power together and start together


def plug_advert(counter: int, t_s: float, *, wh: int = 80_016, watts: float = 1.5) -> ReplayAdvert:
    """The plug's advert with this counter, sent `t_s` seconds into the replay; its energy register (which the plug
    keeps across a power cut, unlike its counter) at `wh`."""
    return ReplayAdvert(PLUG, build_service_data(packet_id=counter % 256, power_mw=int(watts * 1000),
                                                 energy_mwh=wh * 1000, bindkey=KEY, mac=PLUG, counter=counter),
                        t_s=t_s)


def pi(boot: str, up_s: float, wall: float) -> ManualClock:
    """The Pi's clock in one boot: `boot` names the boot (its id's last 8 characters), `up_s` how long it is up."""
    return ManualClock(mono_ns=int(up_s * 1e9), wall=wall, boot_id=f"00000000-0000-4000-8000-0000{boot}")


async def heard_then_a_power_cut(state: Path) -> None:
    """The plug heard for a minute, one advert every 0.2 s (counters 5000-5300), the kettle boiling 30 s of it; the
    use is written a minute after it ended, with the counter and the rate learned. Then the lights go out."""
    first = Gw(state, pi("aaaaaaaa", 86_400.0, 1_764_460_800.0))
    boiling = range(50, 200)  # 10 s to 40 s: 2 kW, the register rising 16 Wh
    await first.hears(*(plug_advert(5000 + i, 0.2 * i, wh=80_000 + (min(max(i - 50, 0), 150) * 16) // 150,
                                    watts=2000.0 if i in boiling else 1.5) for i in range(301)))
    await first.hears(plug_advert(6000, 200.0))  # the use ended (its records wait a minute: hold_use_s) ...
    await first.hears(plug_advert(6500, 300.0))  # ... and go with the next batch, the counters with them

    def kept() -> dict[str, Any]:
        return dict((first.gw.ledger.checkpoint(CHECKPOINT) or {"devices": {PLUG: {}}})["devices"][PLUG])

    await until(lambda: kept().get("counter") == 6500)
    assert first.plug.health.errors == {}
    assert kept() == {"counter": 6500, "key": key_id(KEY), "rate": pytest.approx(5.0, abs=0.01), "boot": "aaaaaaaa",
                      "mono_ms": pytest.approx(86_700_000, abs=1)}
    await first.crash()


async def test_a_plug_restarted_by_the_power_cut_that_restarted_the_pi_is_read_at_once(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Pi is back 60 s after the power came back (55 s on its own clock: the firmware boots first); the plug,
    restarted at the same moment, counts again from 0 and is at 300 when first heard. It cannot have counted that far
    since it was last read more slowly than 5 a second: it is read at once, and the journal says why."""
    caplog.set_level(logging.WARNING)
    await heard_then_a_power_cut(state)

    again = Gw(state, pi("bbbbbbbb", 55.0, 1_764_460_800.0 + 3600))  # however long the cut lasted
    await again.hears(plug_advert(300, 0.0), plug_advert(301, 0.2))
    assert (again.plug.health.errors, again.plug.health.readings) == ({}, 6)
    assert again.gw.meters["kettle"].last_raw == 80_016_000
    await again.stop()
    said = [r.getMessage() for r in caplog.records if "counts its encryption counter again" in r.getMessage()]
    assert said == ["plug: A4:C1:38:8D:18:B2 counts its encryption counter again: 300, below the 6500 read from it "
                    "at least 55 s ago; counting at most 5 a second (the fastest it was seen), a count restarted "
                    "since then is below 650: read as the device restarting (a power cut, a new battery)"]
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


async def test_after_a_power_cut_an_advert_recorded_before_it_is_still_refused(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Someone recorded the plug's advert 5100 before the cut and plays it back when the Pi is back: the plug cannot
    have counted to 5100 in the 55 s the Pi has been up, at 5 a second, so it is a replay, refused with the same
    hint as before; the plug's own adverts are read."""
    await heard_then_a_power_cut(state)

    again = Gw(state, pi("bbbbbbbb", 55.0, 1_764_460_800.0 + 3600))
    await again.hears(plug_advert(5100, 0.0, wh=80_005), plug_advert(290, 0.1))
    assert (again.plug.health.errors, again.plug.health.readings) == ({"replayed_counter": 1}, 3)
    assert again.gw.meters["kettle"].last_raw == 80_016_000
    await again.stop()
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(said) == 1 and "5100 is below the last one read from it, 6500" in said[0], said
    assert "sudo -u koto koto bthome forget-counter plug" in said[0]


async def test_a_row_kept_before_rates_were_kept_loads_and_the_old_rule_applies_until_one_is_learned(
        state: Path) -> None:
    """A `bthome:counters` row written by Koto before it kept rates: the counter is read back and guards as it did,
    so a plug first heard at 300 after the power cut is refused (bthome-ble's rule alone) until a rate is learned."""
    from metering.ledger import Ledger

    sd = StateDir(state / "state")
    with Ledger.open(sd.ledger, gateway_id="gw-ble", key=sd.private_key()) as ledger:
        ledger.append([], checkpoints={CHECKPOINT: {"devices": {PLUG: {"counter": 5301, "key": key_id(KEY)}}}})
    again = Gw(state, pi("bbbbbbbb", 55.0, 1_764_460_800.0))
    await again.hears(plug_advert(300, 0.0), plug_advert(5302, 0.2))
    assert (again.plug.health.errors, again.plug.health.readings) == ({"replayed_counter": 1}, 3)
    await again.stop()
    with Ledger.open(sd.ledger, gateway_id="gw-ble", key=None) as ledger:
        kept = ledger.checkpoint(CHECKPOINT)
    assert kept is not None and kept["devices"][PLUG] == {"counter": 5302, "key": key_id(KEY), "boot": "bbbbbbbb",
                                                          "mono_ms": 55_200}


# ---------------------------------------------------------------------------------------------------------------
# A restart of the plug's count, and an advert recorded before it played back after the gateway restarted


async def plug_restarted(state: Path) -> None:
    """The plug heard for a minute at 5 a second (5000-5300: the rate learned), then unplugged for a moment (the Pi
    stays on): it counts again from 0 and is read at 40. A clean stop writes what is kept, with the counter from
    before the plug's restart."""
    first = Gw(state, pi("aaaaaaaa", 86_400.0, 1_764_460_800.0))
    await first.hears(*(plug_advert(5000 + i, 0.2 * i) for i in range(301)))
    await first.hears(plug_advert(40, 120.0), plug_advert(41, 120.2))
    assert first.plug.health.errors == {}
    await first.stop()
    from metering.ledger import Ledger

    with Ledger.open(state / "state" / "ledger.db", gateway_id="gw-ble", key=None) as ledger:
        kept = (ledger.checkpoint(CHECKPOINT) or {})["devices"][PLUG]
    assert (kept["counter"], kept["before"], kept["mono_ms"]) == (41, 5300, pytest.approx(86_520_200, abs=1))


async def test_an_advert_recorded_before_the_plug_restarted_its_count_is_refused_after_a_gateway_restart(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`systemctl restart koto` a minute later (the same boot, so the time since the plug was read is known): the
    advert recorded at 5200, higher than the plug's 41, is refused; the plug's own are read, a jump of 250 after 50 s
    of lost adverts included (within 100 + 2 x 5 x 50)."""
    await plug_restarted(state)
    again = Gw(state, pi("aaaaaaaa", 86_580.0, 1_764_460_980.0))
    await again.hears(plug_advert(5200, 0.0, wh=80_005), plug_advert(341, 0.2), plug_advert(591, 50.2))
    assert (again.plug.health.errors, again.plug.health.readings) == ({"replayed_counter": 1}, 6)
    assert again.gw.meters["kettle"].last_raw == 80_016_000  # never the recorded 80_005 Wh
    await again.stop()
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(said) == 1 and "its encryption counter 5200 is 5159 above the last one read from it, 41" in said[0]
    assert "not above 5300, where its count was before it restarted" in said[0]
    assert "sudo -u koto koto bthome forget-counter plug" in said[0]


@pytest.mark.parametrize("first_heard", [300, 3041], ids=["power-cut-took-plug-and-pi", "pi-off-10-min"])
async def test_after_a_reboot_the_plugs_first_advert_is_read_however_far_it_counted(state: Path,
                                                                                    first_heard: int) -> None:
    """Across a reboot only the uptime is sure to have passed: a power cut that restarted the plug with the Pi (the
    plug at 300 after 55 s), or the Pi off for ten minutes while the plug counted on (at 3041), would be refused if
    held to 100 + 2 x 5 x 55. The first advert is read; the check goes on from it."""
    await plug_restarted(state)
    again = Gw(state, pi("bbbbbbbb", 55.0, 1_764_461_400.0))
    await again.hears(plug_advert(first_heard, 0.0), plug_advert(first_heard + 1, 0.2),
                      plug_advert(5200, 0.4, wh=80_005))
    assert (again.plug.health.errors, again.plug.health.readings) == ({"replayed_counter": 1}, 6)
    await again.stop()


async def test_a_row_without_before_loads_and_forget_counter_forgets_before_with_the_counter(
        state: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    from metering.ledger import Ledger

    sd = StateDir(state / "state")
    toml = write_config(state)
    with Ledger.open(sd.ledger, gateway_id="gw-ble", key=sd.private_key()) as ledger:  # as the previous Koto wrote it
        ledger.append([], checkpoints={CHECKPOINT: {"devices": {PLUG: {
            "counter": 5300, "key": key_id(KEY), "rate": 5.0, "boot": "aaaaaaaa", "mono_ms": 86_460_000}}}})
    again = Gw(state, pi("aaaaaaaa", 86_520.0, 1_764_460_920.0))
    await again.hears(plug_advert(40, 0.0), plug_advert(5200, 0.2, wh=80_005), plug_advert(41, 0.4))
    assert (again.plug.health.errors, again.plug.health.readings) == ({"replayed_counter": 1}, 6)
    await again.stop()

    rc, out, _ = cli("bthome", "forget-counter", "plug", "--config", str(toml))
    assert rc == 0 and "forgot encryption counter 41 of A4:C1:38:8D:18:B2" in out
    with Ledger.open(sd.ledger, gateway_id="gw-ble", key=None) as ledger:
        assert ledger.checkpoint(CHECKPOINT) == {"devices": {}}
    third = Gw(state, pi("aaaaaaaa", 86_540.0, 1_764_460_940.0))
    await third.hears(plug_advert(5200, 0.0, wh=80_005))  # nothing kept: read whatever its counter
    assert (third.plug.health.errors, third.plug.health.readings) == ({}, 3)
    await third.stop()
