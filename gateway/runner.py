"""Production wiring for `koto run`: the system clock, real backends chosen from the config, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from koto.clock import SystemClock
from koto.loop import install_exception_handler

from .config import GatewayConfig
from .daemon import Gateway

log = logging.getLogger("koto.gateway")

GPIO_DRIVERS = {"s0", "gpio_signal", "mcp3008"}


def production_backends(cfg: GatewayConfig) -> dict[str, Any]:
    """Only the backends a configured source needs, imported only then (no BlueZ needed for a Modbus-only Pi)."""
    drivers = {str(s["driver"]) for a in cfg.appliances for s in a.sources.values()}
    backends: dict[str, Any] = {}
    if drivers & GPIO_DRIVERS:
        from drivers.pins import select_pin_factory

        backends["pin_factory"] = select_pin_factory()
    if "bthome" in drivers:
        from drivers.ble_backend import BleakBackend

        backends["ble"] = BleakBackend(adapter=None)
    return backends


async def run_gateway(cfg: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    install_exception_handler(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gw = Gateway(cfg, clock=SystemClock(), backends=production_backends(cfg))
    log.warning("koto gateway %s running: %d appliances, %d sources, ledger %s", cfg.id, len(gw.meters),
                len(gw.sources), gw.ledger.path)
    await gw.run(stop)
