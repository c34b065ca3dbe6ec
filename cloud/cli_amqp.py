"""`koto-cloud serve-amqp`: the reference receiver reading a RabbitMQ cluster's quorum queues (cloud/amqp.py).

Registered on the `koto-cloud` group by cloud/cli.py. Same receiver, store and acks as `serve`; only the transport
differs (deploy/rabbitmq/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from koto.loop import install_exception_handler

from .cli import DB_HELP, EPILOG, _store, cli


@cli.command("serve-amqp", epilog=EPILOG)
@click.option("--amqp", "urls", required=True, multiple=True,
              help="amqp://user:password@host:5672/ of a cluster node; repeat it for every node (tried in turn)")
@click.option("--db", required=True, help=DB_HELP)
@click.option("--prefix", default="koto/v1", show_default=True)
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="usage queues koto.usage.0..N-1; the same on every receiver, fixed for the deployment")
@click.option("--instance", default=0, show_default=True, type=click.IntRange(0),
              help="this receiver's number, 0..instances-1: which shards it reads first")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1), help="how many receivers run")
@click.option("--prefetch", default=1000, show_default=True, type=click.IntRange(1, 65535),
              help="unacked deliveries per shard in flight to this receiver")
@click.option("--max-batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--linger-ms", default=4.0, show_default=True, type=click.FloatRange(0, 1000))
def serve_amqp(urls: tuple[str, ...], db: str, prefix: str, shards: int, instance: int, instances: int,
               prefetch: int, max_batch: int, linger_ms: float) -> None:
    """Receive, verify, store and ack usage from RabbitMQ's quorum queues (gateways on its MQTT plugin)."""
    from .amqp import AmqpTransport
    from .receiver import Receiver, ReceiverConfig
    from .routing import Topology

    if instance >= instances:
        raise click.BadParameter(f"{instance} is not below --instances {instances}", param_hint="--instance")
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise click.BadParameter(f"{url!r}: use amqp://user:password@host:5672/", param_hint="--amqp")
    transport = AmqpTransport(list(urls), Topology(prefix=prefix, shards=shards), instance=instance,
                              instances=instances, prefetch=prefetch)
    store = _store(db)
    # The MQTT broker URL is not used with a transport; the config still carries the batching settings.
    config = ReceiverConfig(broker="mqtt://127.0.0.1:1883", prefix=prefix, max_batch=max_batch,
                            linger_s=linger_ms / 1000)

    # aiormq logs a lost connection as a traceback; the receiver says it in one line and reconnects.
    logging.getLogger("aiormq").setLevel(logging.ERROR)
    logging.getLogger("aio_pika").setLevel(logging.ERROR)

    async def main() -> None:
        install_exception_handler(asyncio.get_running_loop())
        rx = Receiver(store, config, transport=transport)
        task = asyncio.create_task(rx.run())
        await rx.ready.wait()
        click.echo(f"koto-cloud: ready, receiving on {transport.name}")
        sys.stdout.flush()
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
