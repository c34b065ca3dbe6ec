"""`koto discover` with an installer watching: progress while it probes, impossible requests refused before any
probing, an empty result that says what was tried, and the next command to run."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from drivers.discover_serial import METER_BAUDS, ranges
from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from tests.support.paths import REPO
from tests.support.slow import scaled


async def koto_discover(*args: str) -> tuple[int, str, str]:
    """`koto discover` as its own process (it runs its own event loop), stderr not a terminal, like a script."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "discover", "--ble-seconds", "0", *args, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_it_shows_each_pass_and_each_find_as_it_goes_and_ends_with_koto_check() -> None:
    async with ModbusSimulator([SimMeter("sdm120", 3)]) as sim:
        rc, out, err = await koto_discover("--port", sim.port, "--address", "1-3", "--baud", "9600,2400",
                                           "--timeout", str(scaled(0.1)))
    assert rc == 0
    lines = err.splitlines()
    found = next(i for i, line in enumerate(lines) if line.startswith("  address 3: Eastron SDM120 (float32 voltage"))
    # in order: the first pass, the meter it found, then the second pass for the addresses still silent
    assert lines.index(f"probing {sim.port} at 9600 baud ...") < found < lines.index(
        f"probing {sim.port} at 2400 baud ...")
    assert f"{sim.port} address 3 at 9600 baud: sdm120" in out
    assert err.splitlines()[-1].endswith("then run: koto check --config /etc/koto/koto.toml")


async def test_nothing_found_says_what_was_tried_and_exits_1() -> None:
    async with ModbusSimulator([SimMeter("sdm120", 9)]) as sim:
        rc, out, err = await koto_discover("--port", sim.port, "--address", "1-2,5", "--baud", "9600",
                                            "--timeout", f"{scaled(0.05):g}")
    assert rc == 1
    assert "Modbus meters found: 0" in out
    silent = f"{scaled(0.05):g} s for each that is silent"
    assert f"tried {sim.port} at 9600 baud, addresses 1-2,5 ({silent}): no answer" in out
    assert "A and B swapped" in out
    assert err.splitlines()[-1] == (f"Next: check the wiring, then look wider: koto discover --port "
                                             f"{sim.port} --address 1-247 --baud 9600,2400,4800,19200")


@pytest.mark.parametrize(("args", "named"), [
    (["--port", "/dev/ttyKOTO-missing"], "--port /dev/ttyKOTO-missing: no such serial port"),
    (["--address", "1,248-300"], "--address 249-300: not a Modbus device address"),
    (["--address", "0"], "--address 0: not a Modbus device address"),
    (["--baud", "9600,9601"], "--baud 9601: no meter uses this rate"),
])
def test_an_impossible_request_is_refused_before_probing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: list[str], named: str) -> None:
    port = tmp_path / "ttyFAKE"  # exists, so only the impossible argument is refused; never opened
    port.touch()
    full = ["discover", "--ble-seconds", "0", "--port", str(port), *args]
    assert koto(full) == 2
    out, err = capsys.readouterr()
    assert out == "" and "probing" not in err
    assert err.splitlines() == [f"koto: {named}" + err.splitlines()[0].split(named, 1)[1]]


def test_every_impossible_argument_is_named_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["discover", "--ble-seconds", "0", "--port", "/dev/ttyKOTO-none", "--address", "300",
                 "--baud", "300"]) == 2
    err = capsys.readouterr().err
    assert [line.split(":")[1].split()[0] for line in err.splitlines()] == ["--port", "--address", "--baud"]


def test_ranges_are_written_as_an_installer_types_them() -> None:
    assert ranges([5, 1, 2, 3, 7, 8, 3]) == "1-3,5,7-8"
    assert ranges([]) == ""
    assert 9600 in METER_BAUDS and 9601 not in METER_BAUDS


async def test_gpio_levels_that_cannot_be_read_exit_1_and_say_why() -> None:
    """`koto discover --no-serial --gpio 17` on a machine whose pins cannot be read (here: a factory that does not
    exist) said why and exited 0, as if the levels had been shown."""
    rc, out, _err = await koto_discover("--no-serial", "--gpio", "17", "--pin-factory", "nosuch")
    assert rc == 1
    assert "GPIO not readable here: " in out and "'nosuch' is not supported" in out
    rc, out, _err = await koto_discover("--no-serial", "--gpio", "17", "--pin-factory", "mock")
    assert rc == 0 and "GPIO inputs:" in out
