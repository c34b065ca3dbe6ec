"""The gateway's household devices, each off unless configured: the status LED and the pairing button
(gateway/indicator.py) and Home Assistant (gateway/homeassistant.py). Built with the gateway — Home Assistant's
energy totals start then, before the gateway appends — and run as its tasks, under its supervisor.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from . import homeassistant, indicator
from .errors import ConfigError
from .homeassistant import HomeAssistant, for_gateway
from .indicator import Indicator, gateway_state

if TYPE_CHECKING:
    from pathlib import Path

    from .config import _Table
    from .daemon import Gateway
    from .supervisor import Supervisor


class Household:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.indicator: Indicator | None = None
        if gw.cfg.led is not None or gw.cfg.button is not None:
            self.indicator = Indicator(gw.cfg.led, gw.cfg.button, pin_factory=gw.backends.get("pin_factory"),
                                       on_long_press=self.long_press)
        self.home_assistant: HomeAssistant | None = for_gateway(gw)

    def start(self, tg: asyncio.TaskGroup, sup: Supervisor, workers: list[asyncio.Task[Any]]) -> None:
        """Their tasks; Home Assistant's is named "home-assistant": the gateway stops it after its last records."""
        if self.indicator is not None:
            workers.append(tg.create_task(sup.guard("status LED", self.indicator.run(
                partial(gateway_state, self.gw), self.pairing_active)), name="indicator"))
        if self.home_assistant is not None:
            workers.append(tg.create_task(sup.guard("home assistant", self.home_assistant.run()),
                                          name="home-assistant"))

    def pairing_active(self) -> bool:
        return self.gw.pairing.active

    def long_press(self) -> None:
        """The button was held (the indicator logs it): pairing mode (gateway/pairing.py's PairingMode: the status
        page offers "add an appliance" while it lasts)."""
        self.gw.pairing.enter(time.monotonic())


def parse_household(root: _Table, gw: _Table, base: Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """`[gateway.led]`, `[gateway.button]` (gateway/indicator.py) and `[home_assistant]` (gateway/homeassistant.py),
    each checked by its own module; returns the GatewayConfig fields and the GPIO pins they claim."""
    out: dict[str, Any] = {}
    for name, parse in (("led", indicator.parse_led), ("button", indicator.parse_button)):
        raw = gw.table(name)
        if raw is not None:
            try:
                out[name] = parse(raw.data, file=root.file)
            except ConfigError as e:
                for one in getattr(e, "errors", (e,)):  # every bad value of the table, one line each
                    root.problems.add(one)
    ha = root.table("home_assistant")
    if ha is not None:
        try:
            out["home_assistant"] = homeassistant.parse_config(ha.data, file=root.file, base=base)
        except ConfigError as e:
            root.problems.add(e)
    return out, indicator.claims(out.get("led"), out.get("button"))
