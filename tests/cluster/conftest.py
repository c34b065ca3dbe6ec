"""One three-node RabbitMQ cluster for the tests of this package (booting and joining one takes ~15 s here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.rabbit import RabbitCluster, rabbit_available


@pytest.fixture(scope="package")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three nodes joined into one cluster, MQTT plugin on; a test that kills a node starts it again."""
    if not rabbit_available():
        pytest.skip("RabbitMQ is not installed (apt-get install rabbitmq-server)")
    with RabbitCluster(tmp_path_factory.mktemp("rabbit"), nodes=3) as rc:
        yield rc
