"""Home Assistant discovery on a real Mosquitto, with a peer subscribed as Home Assistant subscribes: the gateway
announces each appliance (payloads checked against Home Assistant's schema), keeps the states and availability
retained, announces again when Home Assistant comes online, and its energy total never goes down across a restart.
A household broker that is down is said once and costs the metering nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.net import Backoff
from metering.ledger import Ledger
from tests.gateway.test_homeassistant import DISCOVERY_TOPIC, ha_errors
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import peer_client


def _cfg(tmp: Path, port: int) -> dict[str, Any]:
    return {"gateway": {"id": "gw-ha", "state_dir": str(tmp / "state"), "batch_ms": 20, "hold_s": 0},
            "home_assistant": {"host": "127.0.0.1", "port": port, "interval_s": 1},
            "appliance": [{"id": "kettle", "profile": "kettle",
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 20_000, "report_s": 0.2}}}]}


class HomeAssistantPeer:
    """Subscribes to discovery and to Koto's topics as Home Assistant would, and keeps every message in order."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.got: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    async def __aenter__(self) -> HomeAssistantPeer:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 5)
        return self

    async def _run(self, ready: asyncio.Event) -> None:
        async with peer_client(self.url, self.name) as c:
            self._client = c
            await c.subscribe("homeassistant/#")
            await c.subscribe("koto/#")
            ready.set()
            async for m in c.messages:
                self.got.append((str(m.topic), bytes(m.payload), bool(m.retain)))

    async def birth(self) -> None:
        await self._client.publish("homeassistant/status", b"online")

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def payloads(self, suffix: str) -> list[bytes]:
        return [p for t, p, _ in self.got if t.endswith(suffix)]

    def energies(self) -> list[float]:
        return [float(json.loads(p)["energy_kwh"]) for p in self.payloads("/kettle/state")]


async def _run_gateway(tmp: Path, port: int, boil_s: float, after_s: float) -> Gateway:
    """One run of the gateway: a kettle boils for `boil_s` on an S0 meter, then rests; a clean stop."""
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(_cfg(tmp, port), file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False)
    assert gw.household.home_assistant is not None
    gw.household.home_assistant.energy_every_s = 0.3
    watts = {"now": 2_200_000}
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    pulses = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: watts["now"], 20_000, step_s=0.02))
    try:
        await asyncio.sleep(boil_s)
        watts["now"] = 0
        await asyncio.sleep(after_s)
    finally:
        pulses.cancel()
        stop.set()
        await run
    return gw


@pytest.mark.slow
async def test_home_assistant_sees_each_appliance_and_an_energy_total_that_never_goes_down(tmp_path: Path) -> None:
    StateDir(tmp_path / "state").provision()
    with Mosquitto(tmp_path / "mqtt") as broker:
        async with HomeAssistantPeer(broker.url, "ha") as ha:
            gw = await _run_gateway(tmp_path, broker.port, boil_s=1.5, after_s=2.5)
            first_run = ha.energies()
            assert ha.payloads("/availability")[-1] == b"offline"  # a clean stop says so

            configs = [(t, json.loads(p)) for t, p, _ in ha.got if t.endswith("/config")]
            assert {t for t, _ in configs} == {f"homeassistant/sensor/gw-ha/kettle_{w}/config"
                                               for w in ("power", "function", "energy")}
            for topic, payload in configs:
                assert DISCOVERY_TOPIC.match(topic) and ha_errors(payload) == [], (topic, ha_errors(payload))
            states = [json.loads(p) for p in ha.payloads("/kettle/state")]
            assert max(s["power_w"] for s in states) > 1500 and {"boil", "standby"} <= {s["function"] for s in states}

            announced = len(configs)
            await _run_gateway(tmp_path, broker.port, boil_s=1.0, after_s=2.0)
            second_run = ha.energies()[len(first_run):]
            await ha.birth()  # Home Assistant restarted: the gateway is not running, so nobody answers
        async with HomeAssistantPeer(broker.url, "ha-after-restart") as late:  # what a restarted HA finds
            await asyncio.sleep(0.3)
            retained = {t: p for t, p, r in late.got if r}
    assert len(configs) == announced == 3
    energies = first_run + second_run
    assert first_run and second_run and energies[-1] > first_run[-1] > 0
    assert all(b >= a for a, b in itertools.pairwise(energies)), energies  # never down: no reset
    assert second_run[0] >= first_run[-1]  # the restart starts where the last run ended, not at 0
    ledger = Ledger.open(gw.state.ledger, gateway_id="gw-ha", key=None)
    try:
        metered_mwh = sum(r.energy_mwh for r in ledger.iter_usage())
    finally:
        ledger.close()
    assert round(energies[-1] * 1_000_000) == metered_mwh  # what Koto metered, to the milliwatt-hour
    assert retained["koto/gw-ha/availability"] == b"offline"
    assert {t for t in retained if t.endswith("/config")} == {t for t, _ in configs}
    assert json.loads(retained["koto/gw-ha/kettle/state"])["energy_kwh"] == f"{energies[-1]:.6f}"


async def test_home_assistant_comes_online_and_gets_the_devices_again_and_loses_a_removed_one(
        tmp_path: Path) -> None:
    from drivers.gpio.sim import mock_factory
    from gateway.ha_totals import TOTALS_FILE
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    (tmp_path / "state" / TOTALS_FILE).write_text(  # an earlier config had a washer, announced then
        json.dumps({"epoch": 0, "through_seq": 0, "mwh": {"washer": 5_000_000}}))
    with Mosquitto(tmp_path / "mqtt") as broker:
        gw = Gateway(parse_config(_cfg(tmp_path, broker.port), file="koto.toml"), clock=SystemClock(),
                     backends={"pin_factory": mock_factory()},
                     sync_enabled=False)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        try:
            async with HomeAssistantPeer(broker.url, "ha") as ha:
                await asyncio.sleep(0.8)
                before = len(ha.payloads("/config"))
                await ha.birth()
                await asyncio.sleep(0.5)
                assert len(ha.payloads("/config")) == before + 6  # the kettle's three, the washer's three removals
                removed = {t for t, p, _ in ha.got if "washer" in t and p == b""}
                assert removed == {f"homeassistant/sensor/gw-ha/washer_{w}/config"
                                   for w in ("power", "function", "energy")} | {"koto/gw-ha/washer/state"}
                assert not any(p for t, p, _ in ha.got if "washer" in t)  # nothing but removals
        finally:
            stop.set()
            await run


async def test_a_dead_household_broker_is_said_once_and_metering_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    port = free_port()
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(_cfg(tmp_path, port), file="koto.toml"), clock=clock,
                 backends={"pin_factory": factory}, sync_enabled=False)
    assert gw.household.home_assistant is not None
    gw.household.home_assistant.backoff = Backoff(0.05, 0.2)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="koto"):
        run = asyncio.create_task(gw.run(stop))
        pulses = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000,
                                                     step_s=0.02))
        try:
            await asyncio.sleep(1.5)  # a few retries
            assert gw.stats.readings > 10 and not run.done()
            with Mosquitto(tmp_path / "mqtt", port=port):  # the broker comes back
                for _ in range(40):
                    await asyncio.sleep(0.1)
                    if gw.household.home_assistant.connected:
                        break
                assert gw.household.home_assistant.connected
                stop.set()
                await run
        finally:
            pulses.cancel()
            stop.set()
            await run
    failures = [r for r in caplog.records if "Home Assistant broker" in r.getMessage()]
    assert len(failures) == 1 and "retrying" in failures[0].getMessage()
    assert any("Home Assistant: connected" in r.getMessage() for r in caplog.records)


async def test_a_gateway_killed_outright_is_marked_offline_by_its_will(tmp_path: Path) -> None:
    """kill -9: no clean stop says anything; the broker publishes the Will, and Home Assistant shows the devices
    unavailable."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support.paths import REPO

    StateDir(tmp_path / "state").provision()
    with Mosquitto(tmp_path / "mqtt") as broker:
        cfg = tmp_path / "koto.toml"
        cfg.write_text(f"""[gateway]
id = "gw-ha"
state_dir = "{tmp_path / 'state'}"

[home_assistant]
host = "127.0.0.1"
port = {broker.port}

[[appliance]]
id = "kettle"
profile = "kettle"
[appliance.sources.k]
driver = "s0"
pin = 17
imp_per_kwh = 1000
""")
        async with HomeAssistantPeer(broker.url, "ha") as ha:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg), cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO), "GPIOZERO_PIN_FACTORY": "mock",
                     "RUNTIME_DIRECTORY": str(tmp_path / "run")})
            try:
                for _ in range(150):
                    await asyncio.sleep(0.1)
                    if ha.payloads("/availability") == [b"online"]:
                        break
                assert ha.payloads("/availability") == [b"online"]
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            for _ in range(50):
                await asyncio.sleep(0.1)
                if len(ha.payloads("/availability")) > 1:
                    break
            assert ha.payloads("/availability") == [b"online", b"offline"]
