"""The gateway killed with SIGKILL and the broker restarted during drains: the cloud still gets every record once.

The gateway is a child process (tests/support/gw_child.py) that appends records at a steady rate and runs Sync; the
receiver from cloud/ is the peer. These are compressed versions of `bench/chaos.py --synthetic` (20 kills, 5 broker
restarts).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.mqtt_conn import make_client
from koto.net import parse_broker_url
from tests.support.broker import Mosquitto
from tests.support.gw_child import REPO, chaos


async def test_gateway_sigkilled_during_a_drain_and_restarted(tmp_path: Path) -> None:
    result = await chaos(tmp_path, total=1500, gateway_kills=1, broker_restarts=0, rate=500)
    assert result.gateway_kills == 1
    assert result.exactly_once, f"stored {result.stored} of {result.total}"
    assert result.chain_problems == []
    assert result.energy_mwh == result.register_delta_mwh


async def test_mid_size_chaos_over_tls_three_gateway_kills_and_two_broker_restarts(tmp_path: Path) -> None:
    result = await chaos(tmp_path, total=2000, gateway_kills=3, broker_restarts=2, rate=500, tls=True)
    assert (result.gateway_kills, result.broker_restarts) == (3, 2), result.log
    assert result.exactly_once, f"stored {result.stored} of {result.total}; {result.log}"
    assert result.chain_problems == []
    assert result.energy_mwh == result.register_delta_mwh
    assert result.ok


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


async def test_the_will_marks_a_killed_gateway_offline_and_the_next_birth_online(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        cmd = [sys.executable, "-m", "tests.support.gw_child", "--state", str(tmp_path / "gw"), "--gateway", "gw-w",
               "--broker", broker.url, "--total", "100000", "--rate", "50"]
        statuses: list[dict[str, object]] = []
        obs = make_client(url=parse_broker_url(broker.url), client_id="obs", persistent=False)
        async with obs:
            await obs.subscribe("koto/v1/gw-w/up/status", qos=1)
            child = spawn(cmd)
            try:
                async with asyncio.timeout(30):
                    async for m in obs.messages:
                        statuses.append(json.loads(m.payload))
                        if len(statuses) == 1:
                            child.send_signal(signal.SIGKILL)
                            child.wait()
                            child = spawn(cmd)
                        if len(statuses) == 3:
                            break
            finally:
                child.kill()
                child.wait()
    assert [s["online"] for s in statuses] == [True, False, True]
    assert statuses[1] == {"online": False, "gateway": "gw-w"}
    assert statuses[2]["last_seq"] >= statuses[0]["last_seq"]  # type: ignore[operator]
