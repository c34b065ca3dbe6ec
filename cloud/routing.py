"""Where the gateways' MQTT messages land on a RabbitMQ cluster, and which receiver reads them: pure names, no I/O.

RabbitMQ's MQTT plugin publishes every MQTT message to the `amq.topic` exchange with the topic as routing key, `/`
and `.` swapped (`koto/v1/gw-1/up/usage` becomes `koto.v1.gw-1.up.usage`). From there:

    amq.topic --koto.v1.*.up.usage--> koto.usage (x-consistent-hash on the routing key, i.e. on the gateway id)
                                          |-- "1" --> koto.usage.0   quorum, single active consumer
                                          |-- "1" --> koto.usage.1   ...
                                          `-- "1" --> koto.usage.N-1
    amq.topic --koto.v1.*.up.status--> koto.control   quorum, competing consumers
    amq.topic --koto.v1.*.up.reply---> koto.control

Usage is sharded by gateway so that one gateway's records always reach one receiver, in order: the receiver then
authenticates a whole run of them with one signature (cloud/verifier.py). Dealt round-robin over competing
consumers, each receiver would see every other record and check every signature (issue 14 measured 0.47x of raw
publish with two receivers on Mosquitto's round-robin `$share`, against 0.66-0.76x with one). Each shard has a
single active consumer, so a shard is read by one receiver at a time, and when that receiver dies, the broker
hands its shard (and the deliveries it had not acked) to the next receiver registered on it. Births and replies
need no order across gateways and go to one queue that every receiver reads.

`definitions()` is the same topology as a RabbitMQ definitions document (deploy/rabbitmq/definitions.json is made
from it, and a test keeps the two equal), for operators who load it at boot instead of letting receivers declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AMQ_TOPIC = "amq.topic"
_SWAP = str.maketrans("/.", "./")


def topic_to_key(topic: str) -> str:
    """An MQTT topic as RabbitMQ's MQTT plugin routes it: `/` becomes `.` and `.` becomes `/`."""
    return topic.translate(_SWAP)


def key_to_topic(key: str) -> str:
    """The MQTT topic a routing key came from (the swap is its own inverse)."""
    return key.translate(_SWAP)


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of the exchange and queues the receivers use; `shards` is fixed for the life of a deployment.

    Changing `shards` moves gateways between shards: stop the receivers, drain the old queues, then restart with
    the new count (docs/sync.md, "Scaling out").
    """

    prefix: str = "koto/v1"
    name: str = "koto"
    shards: int = 4
    # A message the receivers gave back this many times (each receiver that took it died before acking it) goes
    # to the dead-letter queue instead of taking down the next receiver too.
    delivery_limit: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 1024:
            raise ValueError(f"shards {self.shards}: use 1 to 1024")

    @property
    def usage_exchange(self) -> str:
        return f"{self.name}.usage"

    def shard_queue(self, i: int) -> str:
        return f"{self.name}.usage.{i}"

    @property
    def shard_queues(self) -> list[str]:
        return [self.shard_queue(i) for i in range(self.shards)]

    @property
    def control_queue(self) -> str:
        return f"{self.name}.control"

    @property
    def dead_queue(self) -> str:
        return f"{self.name}.dead"

    def uplink_key(self, kind: str) -> str:
        """The binding key for every gateway's `up/{kind}` (one topic word per gateway id)."""
        return topic_to_key(f"{self.prefix}/+/up/{kind}").replace("+", "*")

    def ack_key(self, gateway: str) -> str:
        return topic_to_key(f"{self.prefix}/{gateway}/down/ack")

    def shard_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-single-active-consumer": True, **self._dead_letter()}

    def control_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum", **self._dead_letter()}

    def _dead_letter(self) -> dict[str, Any]:
        return {"x-delivery-limit": self.delivery_limit, "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_queue}

    def preferred(self, instance: int, instances: int) -> list[int]:
        """The shards receiver `instance` of `instances` asks for first (and so reads while all are up)."""
        return [i for i in range(self.shards) if i % instances == instance]

    def definitions(self, vhost: str = "/") -> dict[str, Any]:
        """This topology as a RabbitMQ definitions document (`rabbitmqctl import_definitions`)."""
        queues = [{"name": q, "vhost": vhost, "durable": True, "auto_delete": False,
                   "arguments": self.shard_arguments()} for q in self.shard_queues]
        queues.append({"name": self.control_queue, "vhost": vhost, "durable": True, "auto_delete": False,
                       "arguments": self.control_arguments()})
        queues.append({"name": self.dead_queue, "vhost": vhost, "durable": True, "auto_delete": False,
                       "arguments": {"x-queue-type": "quorum"}})
        bindings = [
            {"source": AMQ_TOPIC, "vhost": vhost, "destination": self.usage_exchange, "destination_type": "exchange",
             "routing_key": self.uplink_key("usage"), "arguments": {}},
            *({"source": self.usage_exchange, "vhost": vhost, "destination": q, "destination_type": "queue",
               "routing_key": "1", "arguments": {}} for q in self.shard_queues),
            *({"source": AMQ_TOPIC, "vhost": vhost, "destination": self.control_queue, "destination_type": "queue",
               "routing_key": self.uplink_key(kind), "arguments": {}} for kind in ("status", "reply")),
        ]
        return {
            "exchanges": [{"name": self.usage_exchange, "vhost": vhost, "type": "x-consistent-hash",
                           "durable": True, "auto_delete": False, "internal": False, "arguments": {}}],
            "queues": queues,
            "bindings": bindings,
        }


__all__ = ["AMQ_TOPIC", "Topology", "key_to_topic", "topic_to_key"]
