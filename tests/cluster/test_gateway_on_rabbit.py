"""A real Koto gateway (gateway.sync.Sync over its ledger, aiomqtt) on RabbitMQ's MQTT plugin, speaking MQTT 3.1.1
(RabbitMQ before 3.13 has no MQTT 5: the gateway's `[cloud] protocol = 311`), through a quorum-queue shard to the
receiver's AMQP transport and PostgreSQL, and acked back through the plugin to the gateway's down/ack subscription.
"""

from __future__ import annotations

import pytest

from cloud.amqp import AmqpTransport
from cloud.receiver import Receiver, ReceiverConfig
from cloud.routing import Topology
from cloud.store import PostgresStore
from gateway.config import SyncConfig
from gateway.sync import Sync
from koto.clock import SystemClock
from koto.signing import public_pem
from tests.support.cloudpeer import until
from tests.support.gw_child import append_usage, device_key, open_ledger
from tests.support.rabbit import rabbit_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rabbit_available(), reason="RabbitMQ is not installed (apt-get install rabbitmq-server)"),
]
GW = "gw-rabbit"


async def test_a_real_gateway_on_mqtt_311_is_stored_and_acked_through_its_head(tmp_path, pg_dsn, rabbit):
    ledger = open_ledger(tmp_path / "gw", GW)
    append_usage(ledger, 120, batch=40)
    with PostgresStore(pg_dsn, schema="rabbit") as store:
        store.register(GW, public_pem(device_key(tmp_path / "gw")))
        node = rabbit.nodes[0]
        # The package's cluster is shared with the chaos test: the same shard count, so every shard has a consumer.
        transport = AmqpTransport(rabbit.amqp_urls, Topology(shards=4), standby_after_s=0.1)
        rx = Receiver(store, ReceiverConfig(broker="mqtt://127.0.0.1:1"), transport=transport)
        cfg = SyncConfig(gateway_id=GW, broker=node.mqtt_url, protocol=311)
        async with rx, Sync(cfg, ledger, clock=SystemClock(), version="test") as sync:
            await until(lambda: ledger.acked_through() == 120, 60)
            append_usage(ledger, 30)  # live records after the backlog
            sync.notify()
            await until(lambda: ledger.acked_through() == 150, 60)
        assert store.stored_seqs(GW, ledger.epoch) == list(range(1, 151))
        assert sync.health.ack_mismatches == 0
        store.drop_schema()
    ledger.close()
