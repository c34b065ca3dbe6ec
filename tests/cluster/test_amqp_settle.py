"""The AMQP transport's settling: RabbitMQ is acked cumulatively, and never over a delivery still waiting for its
commit (cloud/amqp.py). No broker is needed to say which tag would be acked; the broker-facing half (one
basic.ack with `multiple` per advance) runs in the cluster tests."""

from __future__ import annotations

from types import SimpleNamespace

from cloud.amqp import AmqpLink, AmqpTransport


def delivery(tag: int, key: str = "koto.v1.gw-1.up.usage") -> SimpleNamespace:
    return SimpleNamespace(delivery=SimpleNamespace(delivery_tag=tag, routing_key=key), body=b"{}")


async def link_with(tags: list[int]) -> AmqpLink:
    link = AmqpTransport(["amqp://guest:guest@127.0.0.1:1/"]).connect()
    for tag in tags:
        await link._on_message(delivery(tag))
    return link


async def test_deliveries_reach_the_receiver_as_mqtt_topics_with_their_tags():
    link = await link_with([1, 2])
    got = await link.receive()
    assert [(m.topic, m.tag) for m in got] == [("koto/v1/gw-1/up/usage", 1), ("koto/v1/gw-1/up/usage", 2)]


async def test_a_later_message_done_early_waits_for_the_batch_before_it():
    link = await link_with([1, 2, 3, 4, 5])
    link.settle([4])  # a birth handled while records 1-3 wait for their commit
    assert link.settled_through == 0
    link.settle([1, 2, 3])  # their commit is done
    assert link.settled_through == 4
    link.settle([5])
    assert link.settled_through == 5


async def test_settling_in_pieces_only_ever_moves_the_ack_forward():
    link = await link_with(list(range(1, 11)))
    seen = []
    for chunk in ([3, 1], [2], [7, 8], [4, 5, 6], [10], [9]):
        link.settle(chunk)
        seen.append(link.settled_through)
    assert seen == [1, 3, 3, 8, 8, 10]
