"""The RabbitMQ topology as names and documents: what operators load is what the receivers declare."""

from __future__ import annotations

import json

import pytest

from cloud.routing import Topology, key_to_topic, topic_to_key
from tests.support.rabbit import DEPLOY


def test_mqtt_topics_and_routing_keys_swap_slash_and_dot_as_the_mqtt_plugin_does():
    assert topic_to_key("koto/v1/gw-1/up/usage") == "koto.v1.gw-1.up.usage"
    assert topic_to_key("koto/v1/site.7/down/ack") == "koto.v1.site/7.down.ack"  # a dot in an id stays one word
    assert key_to_topic(topic_to_key("koto/v1/site.7/down/ack")) == "koto/v1/site.7/down/ack"


def test_every_gateway_uplink_is_bound_by_one_word_wildcards():
    top = Topology(prefix="acme/koto/v1")
    assert top.uplink_key("usage") == "acme.koto.v1.*.up.usage"
    assert top.ack_key("gw-1") == "acme.koto.v1.gw-1.down.ack"


def test_shards_are_quorum_queues_with_one_active_consumer_and_a_dead_letter_queue():
    top = Topology(shards=3)
    assert top.shard_queues == ["koto.usage.0", "koto.usage.1", "koto.usage.2"]
    args = top.shard_arguments()
    assert args["x-queue-type"] == "quorum" and args["x-single-active-consumer"] is True
    assert args["x-dead-letter-routing-key"] == "koto.dead"


def test_receivers_prefer_disjoint_shards_that_cover_them_all():
    top = Topology(shards=8)
    preferred = [top.preferred(i, 3) for i in range(3)]
    assert sorted(s for p in preferred for s in p) == list(range(8))
    assert all(p for p in preferred)


def test_a_shard_count_outside_1_to_1024_is_refused():
    with pytest.raises(ValueError, match="shards 0"):
        Topology(shards=0)


def test_deploy_definitions_are_the_topology_the_receivers_declare():
    assert json.loads((DEPLOY / "definitions.json").read_text()) == Topology().definitions()
