"""The config's hardware, checked as a whole at load (`koto check`, `koto run`): every source built (pure: no port is
opened) so that its driver checks its own keys; no two sources (or a source and a relay) on one piece of hardware;
and each appliance's channel one its energy source has, with what its `energy_kind` meters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from koto.reading import Quantity

from .errors import ConfigError, Problems

if TYPE_CHECKING:
    from .config import ApplianceConfig


_RESOURCE_WORDS = {"serial": "serial port", "gpio": "GPIO", "ble": "BLE device", "mcp3008": "MCP3008 input"}


def check_hardware(appliances: tuple[ApplianceConfig, ...], problems: Problems, file: str,
                   household: Sequence[tuple[str, Any]] = ()) -> None:
    """Build every source (pure: no port is opened) so each driver checks its own keys now, then refuse two
    sources (or a source and a relay) that would fight over one piece of hardware: two meters on one RS-485 bus
    with different line settings, one GPIO pin twice, one BLE device twice. Found at load, named by file and key,
    instead of when the second source opens at run time."""
    from drivers.base import Claim, claim_conflict
    from drivers.errors import DriverConfigError
    from drivers.gpio.relay import Relay
    from koto.clock import ManualClock

    clock = ManualClock()
    held: dict[str, tuple[str, Claim]] = {}  # resource -> (dotted key of the first claimant, its claim)
    for where, claim in household:  # the status LED and the button (gateway/indicator.py)
        first = held.setdefault(claim.resource, (where, claim))
        if first[0] != where:
            problems.add(ConfigError(file, f"{where}.{claim.key}", f"GPIO {claim.resource[5:]} is already used by "
                                     f"{first[0]}; each pin can be used once"))
    for app in appliances:
        claims: list[tuple[str, Claim]] = []
        for name, scfg in app.sources.items():
            src = _build_saying_every_problem(name, scfg, clock, file, problems)
            if src is None:
                continue
            claims += [(f"appliance.{app.id}.sources.{name}", c) for c in src.claims()]
            if name == app.energy:
                problem = _channel_problem(app, src.channels())
                if problem:
                    problems.add(ConfigError(file, f"appliance.{app.id}.channel", problem))
        if app.relay is not None:
            try:
                relay = Relay.from_config(f"{app.id}-relay", app.relay)
            except DriverConfigError as e:
                for one in e.each():
                    problems.add(ConfigError(file, f"appliance.{app.id}.relay.{one.key}", one.problem))
            else:
                claims.append((f"appliance.{app.id}.relay", Claim(f"gpio:{relay.pin}", "pin")))
        for where, claim in claims:
            first = held.setdefault(claim.resource, (where, claim))
            if first[0] == where:
                continue
            problem = claim_conflict(first[1], claim)
            if problem:
                kind, _, ident = claim.resource.partition(":")
                named = claim.label or ident
                if kind == "serial" and first[1].label and first[1].label != named:  # two names of one adapter
                    named += f" (the same device as {first[1].label})"
                elif not claim.label and first[1].label:  # the first claimant's words for it (a pin of the Pi's UART)
                    named = first[1].label
                problems.add(ConfigError(file, f"{where}.{claim.key}",
                                         f"{_RESOURCE_WORDS.get(kind, kind)} {named} {problem} (see {first[0]})"))


def _channel_problem(app: ApplianceConfig, channels: Mapping[str, frozenset[Quantity]] | None) -> str:
    """Why the appliance's energy source will never give its meter what it takes on its channel ("" if it will, or
    if the source only knows its channels from its readings): a channel the meter does not have, or one without the
    quantity `energy_kind` meters (an appliance on a phase of a map that has only the phase's power)."""
    if channels is None:
        return ""

    def said(c: str) -> str:
        return '"" (the meter\'s total)' if c == "" else repr(c)
    if app.channel not in channels:
        return (f"{said(app.channel)} is not a channel of source {app.energy!r}; its channels: "
                f"{', '.join(said(c) for c in sorted(channels))}")
    # energy_kind -> (what the meter needs on the channel, its name, the kind that would meter what is there)
    need = {"register": (Quantity.ENERGY_MWH, "energy", "power"), "power": (Quantity.POWER_MW, "power", "register")}
    if app.energy_kind in need:
        quantity, what, other = need[app.energy_kind]
        if quantity not in channels[app.channel]:
            return (f"source {app.energy!r} has no {what} register on channel {said(app.channel)}: set "
                    f"energy_kind = \"{other}\", or use a register map that has one")
    return ""


def _build_saying_every_problem(name: str, cfg: Mapping[str, Any], clock: Any, file: str,
                                problems: Problems) -> Any:
    """The source built from `cfg`, or None with every problem of it added, one each: Koto's drivers check every
    key and raise them all at once (a `DriverConfigErrors`). A driver that stops at its first problem is built
    again without the key when that is an unknown one (a typo, the commonest mistake), so the problems of the keys
    after it are said in the same `koto check` instead of one run each."""
    from drivers.base import build_source
    from drivers.errors import DriverConfigError

    left = dict(cfg)
    while True:
        try:
            return build_source(name, left, clock=clock, file=file)
        except DriverConfigError as e:
            for one in e.each():
                problems.add(one)
            if len(e.each()) > 1 or not (e.problem.startswith("unknown key") and e.key in left):
                return None
            del left[e.key]
