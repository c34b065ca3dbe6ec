"""End to end, as an operator would run it: `koto run`'s Gateway meters a Modbus meter, syncs over MQTT 5 with TLS
client certificates through a real Mosquitto (the deploy/mosquitto ACL), the reference receiver verifies, stores and
acks every record exactly once, and a tariff signed with `koto-cloud tariff` changes what the next records cost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.cli import main as koto_cloud
from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import open_store
from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.simulate import washer
from koto.clock import SystemClock
from metering.ledger import Ledger
from tests.support.broker import Mosquitto
from tests.support.pki import TestPKI
from tests.support.slow import scaled

GW = "gw-e2e"
TARIFF = {"id": "household-2027", "version": 7, "currency": "EUR", "exponent": 2,
          "rates": [{"match": "*/*", "per_kwh": "0.41"}], "windows": []}


async def until(cond: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    for _ in range(int(scaled(limit_s) / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_config(tmp: Path, port: str, broker: Mosquitto, pki: TestPKI, cert: Path, key: Path,
                   operator_pub: Path) -> Path:
    cfg = tmp / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "{GW}"
state_dir = "{tmp / 'state'}"
timezone = "Europe/Berlin"
batch_ms = 50
checkpoint_s = 1
hold_s = 0  # records are committed (and sent) every batch, not held to share a transaction

[cloud]
broker = "{broker.url}"
ca = "{pki.ca}"
cert = "{cert}"
key = "{key}"
operator_keys = ["{operator_pub}"]
ack_timeout_s = 2

[tariff]
id = "local-default"
version = 1
currency = "EUR"
exponent = 2
rates = [{{ match = "*/*", per_kwh = "0.30" }}]
windows = []

[[appliance]]
id = "washer"
profile = "washing_machine"
subject = "household-7/washer"
energy = "meter"
interim_s = 2

[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "{port}"
address = 1
poll_s = 0.05
timeout_s = {scaled(0.3)}
""")
    return cfg


@pytest.mark.slow
async def test_a_gateway_meters_syncs_exactly_once_and_applies_a_signed_tariff(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = TestPKI(tmp_path / "pki")
    gw_cert, rx_cert, op_cert = pki.client(GW), pki.client("koto-receiver"), pki.client("koto-operator")
    operator_key, operator_pub = tmp_path / "operator.pem", tmp_path / "operator.pub.pem"
    assert koto_cloud(["keygen", "--out", str(operator_key)]) == 0
    operator_pub.write_text(capsys.readouterr().out)
    program = washer()
    t0 = asyncio.get_running_loop().time()
    meter = SimMeter("sdm120", 1, energy_kwh=321.0,
                     power_fn=lambda t: program.power_w((t - t0) * 20 % program.length_s))
    cloud_db = tmp_path / "cloud.db"
    with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        async with ModbusSimulator([meter]) as bus:
            cfg_path = gateway_config(tmp_path, bus.port, broker, pki, gw_cert.cert, gw_cert.key, operator_pub)
            assert koto(["provision", "--config", str(cfg_path)]) == 0
            capsys.readouterr()
            store = open_store(str(cloud_db))
            store.register(GW, (tmp_path / "state" / "keys" / "device.pub.pem").read_text())
            rx_cfg = ReceiverConfig(broker=broker.url, ca=pki.ca, cert=rx_cert.cert, key=rx_cert.key)
            async with Receiver(store, rx_cfg):
                gw = Gateway(load_config(cfg_path), clock=SystemClock())
                stop = asyncio.Event()
                run = asyncio.create_task(gw.run(stop))
                await until(lambda: gw.ledger.acked_through() >= 6, "six records acked by the cloud", 60)

                cloud_args = ["--db", str(cloud_db), "--broker", broker.url, "--ca", str(pki.ca),
                              "--cert", str(op_cert.cert), "--cert-key", str(op_cert.key)]
                tariff_file = tmp_path / "tariff.json"
                tariff_file.write_text(json.dumps(TARIFF))
                rc = await asyncio.to_thread(koto_cloud, ["tariff", GW, "--file", str(tariff_file),
                                                          "--key", str(operator_key), *cloud_args])
                assert rc == 0
                await until(lambda: (t := gw.pricing.tariff_for("washer")) is not None and t.version == 7,
                            "the signed tariff applied on the gateway")
                await until(lambda: any(r.get("status") == "applied" for r in store.replies(GW)),
                            "the gateway's reply stored at the cloud")
                applied_at = gw.ledger.head()[0]
                await until(lambda: gw.ledger.head()[0] >= applied_at + 4, "records after the tariff", 60)
                stop.set()
                await run  # a clean stop: closes the open segment, records the stop, lets the cloud ack it
                with Ledger.open(tmp_path / "state" / "ledger.db", gateway_id=GW, key=None) as ledger:
                    head, acked = ledger.head()[0], ledger.acked_through()
                assert acked == head
                await until(lambda: store.count(GW) == head, "every record at the cloud")
            store.close()

    store = open_store(str(cloud_db))
    events = [json.loads(b) for b in store.bodies(GW)]
    seqs = sorted(e["data"]["seq"] for e in events)
    assert seqs == list(range(1, head + 1))  # every record exactly once, none invented
    assert store.alarms(GW) == []
    usage = [e["data"] for e in events if e["type"] == "io.koto.usage.v1" and e["data"]["seq"] > applied_at]
    assert usage and all(d["tariff_id"] == "household-2027" and d["tariff_version"] == 7 for d in usage)
    lifecycle = [e["data"] for e in events if e["type"] == "io.koto.lifecycle.v1"]
    assert any(d.get("event") == "command_applied" and d.get("command_type") == "io.koto.cmd.tariff.v1"
               for d in lifecycle)
    store.close()
    assert koto_cloud(["verify", GW, "--db", str(cloud_db)]) == 0
    assert koto(["verify", "--state-dir", str(tmp_path / "state")]) == 0
