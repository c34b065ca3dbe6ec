"""Production wiring for `koto run`: the system clock, real backends chosen from the config, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from drivers.base import Backend, driver_class
from koto.clock import SystemClock
from koto.errors import KotoError
from koto.loop import install_exception_handler

from .config import GatewayConfig
from .daemon import Gateway
from .sdnotify import Notifier
from .status import runtime_dir
from .supervisor import EXIT_DEADLINE, StopDeadline, StopSignals

log = logging.getLogger("koto.gateway")


def _pin_factory() -> Any:
    from drivers.pins import select_pin_factory

    return select_pin_factory()


def _ble() -> Any:
    from drivers.ble_backend import BleakBackend

    return BleakBackend(adapter=None)


BACKENDS: dict[Backend, Callable[[], Any]] = {"pin_factory": _pin_factory, "ble": _ble}


def production_backends(cfg: GatewayConfig) -> dict[str, Any]:
    """Only the backends a configured source's driver `needs`, each imported only then (no BlueZ needed for a
    Modbus-only Pi)."""
    needed = {b for a in cfg.appliances for s in a.sources.values() for b in driver_class(str(s["driver"])).needs}
    return {b: build() for b, build in BACKENDS.items() if b in needed}


async def run_gateway(cfg: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT. The first signal starts the graceful stop and arms the stop deadline; a second
    one (an impatient Ctrl-C) exits at once, as the deadline would. Both are heard on a thread of their own, so a
    blocked event loop cannot keep them waiting (see `gateway.supervisor`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    install_exception_handler(loop)
    deadline = StopDeadline(cfg.stop_timeout_s)

    def first(sig: signal.Signals) -> None:  # on the signal thread: the loop may be blocked
        log.info("%s: stopping (at most %g s)", sig.name, cfg.stop_timeout_s)
        deadline.start()
        loop.call_soon_threadsafe(stop.set)

    def again(sig: signal.Signals) -> None:
        log.warning("%s again: exiting now with what the ledger has committed", sig.name)
        os._exit(EXIT_DEADLINE)

    signals = StopSignals(first, again)
    signals.install()  # before any thread is started (a backend's, the executor's): they all inherit the mask
    try:
        gw = Gateway(cfg, clock=SystemClock(), backends=production_backends(cfg), runtime_dir=runtime_dir(),
                     deadline=deadline, notifier=Notifier(), web=True)
    except BaseException:
        signals.close()
        raise
    log.info("koto gateway %s running: %d appliances, %d sources, ledger %s", cfg.id, len(gw.meters),
             len(gw.sources), gw.ledger.path)
    try:
        await gw.run(stop)
    except KotoError as e:
        deadline.finished(code=2, last_words=f"koto: {e}")
        raise
    finally:
        signals.close()
    deadline.finished()
