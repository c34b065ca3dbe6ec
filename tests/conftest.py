"""Fixtures shared across the test packages: real peers (a Mosquitto broker on a free port), a device key, a clock.

Helpers that are not fixtures (event factories, traces, ledger checks, the PKI) live in `tests/support/`.
Markers: `slow` for tests that take more than ~10 s (`make test-fast` leaves them out; `make test` runs everything),
`hardware` for tests that need a real Raspberry Pi and wiring (never run here).
`KOTO_TEST_SLOWDOWN=N` stretches every hang timeout N times for a slow machine (tests/support/slow.py).
`make test` runs two pytest-xdist workers, each taking whole files (`pytest_collection_modifyitems` below).
A test that hangs fails after HANG_S (pytest-timeout, with every thread's stack printed) instead of holding the run.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from koto.clock import ManualClock
from koto.signing import PrivateKey, generate_key
from tests.support.broker import Mosquitto
from tests.support.fuzzing import DEFAULT_EXAMPLES, fuzz_examples
from tests.support.paths import process_folder
from tests.support.postgres import PostgresServer
from tests.support.slow import SLOWDOWN, scaled

if SLOWDOWN > 1 or os.environ.get("PYTEST_XDIST_WORKER"):
    # Hypothesis fails an example that takes over 200 ms and warns of slow data generation; on a machine
    # KOTO_TEST_SLOWDOWN times slower, or with the other worker of `make test` on the other core, both say only
    # that the machine is busy (no test asserts a duration: bench/ measures them).
    from hypothesis import HealthCheck, settings

    settings.register_profile("slow-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("slow-machine")

# A gateway keeps its runtime files (status.json, the power log) in $RUNTIME_DIRECTORY, else /run/koto: a test's
# gateway given no folder of its own would write the machine's /run/koto, shared by both workers (and by a gateway
# installed here). Each process of the run (the controller and each worker) gets a folder of its own instead.
RUN_PREFIX = "koto-tests-run-"
if not os.environ.get("RUNTIME_DIRECTORY") or Path(os.environ["RUNTIME_DIRECTORY"]).name.startswith(RUN_PREFIX):
    os.environ["RUNTIME_DIRECTORY"] = process_folder(RUN_PREFIX)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain (anonymous, no TLS) Mosquitto process of its own, stopped after the test."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A real pty that anyone may open (crw-rw-rw-), standing for a serial port."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.chmod(name, 0o666)
    try:
        yield name
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture(scope="session")
def key() -> PrivateKey:
    """An ECDSA P-256 device key (one per session: a test that needs a second key makes its own)."""
    return generate_key()


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand (monotonic, wall, sync flag, boot id)."""
    return ManualClock()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL server: KOTO_TEST_PG_DSN's when set (a server of your choosing), else one of our own."""
    dsn = os.environ.get("KOTO_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    with PostgresServer() as server:
        yield server.dsn


# A test that takes longer than this has hung: it fails, its threads' stacks are printed, and the run goes on (the
# longest test takes ~45 s here, `pytest --durations`). Scaled by KOTO_TEST_SLOWDOWN and, under `make fuzz`, by the
# cases per fuzz test; `pytest --timeout N` on the command line overrides it. Not for the image and debootstrap
# tests, which build and boot whole systems (their own steps carry their own timeouts).
HANG_S = 300.0
# The first test of tests/cluster/ starts a three-node RabbitMQ cluster in its set-up: 19 s here idle, 111 s with
# the machine at a load of 7 (2026-12-07), so that package's tests get three times as long.
HANG_TIMES = {"cluster": 3.0}
NO_HANG_LIMIT = ("image", "debootstrap", "hardware")

# Packages whose files share one package-scoped peer: their tests go to one worker, so it starts once.
ONE_WORKER = {"cluster": "a three-node RabbitMQ cluster (tests/cluster/conftest.py)"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (make test) each test file goes whole to one worker, as a file's tests
    share module-scoped peers (a browser, a broker), which would otherwise start once per worker; a package in
    ONE_WORKER goes whole. Without xdist the marks change nothing. Each test gets its hang limit (HANG_S)."""
    tests = Path(__file__).parent
    limit = hang_limit(config)
    for item in items:
        rel = item.path.relative_to(tests) if item.path.is_relative_to(tests) else item.path
        group = rel.parts[0] if rel.parts and rel.parts[0] in ONE_WORKER else str(rel)
        item.add_marker(pytest.mark.xdist_group(group))
        if limit and item.get_closest_marker("timeout") is None \
                and not any(item.get_closest_marker(m) for m in NO_HANG_LIMIT):
            item.add_marker(pytest.mark.timeout(limit * HANG_TIMES.get(rel.parts[0] if rel.parts else "", 1.0)))


def hang_limit(config: pytest.Config) -> float | None:
    """Seconds after which a test counts as hung; None when pytest-timeout is absent or `--timeout` was given."""
    if not config.pluginmanager.hasplugin("timeout") or config.getoption("timeout", None) is not None:
        return None
    return scaled(HANG_S) * max(1.0, fuzz_examples() / DEFAULT_EXAMPLES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """The last resort behind the hang limit: the limit fails a hung test by raising in it, and should its clean-up
    hang too (a `proc.wait()` on a child that ignores SIGTERM), this process exits a minute later with every thread's
    stack on stderr; xdist then reports the test as the one its worker crashed in and goes on with a new worker."""
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker is not None and marker.args else 0.0
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds + 60.0, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        if seconds > 0:
            faulthandler.cancel_dump_traceback_later()
