"""The page's "add an appliance" flow: find a meter, read it live, save it, undo it.

    search (what `koto discover` does, as a bounded task with progress) → pick a meter, a name and a profile →
    read it now (one live reading from that very meter, so the installer sees it is the right one) → save
    (gateway.pairing: STATE_DIR/household.toml appended and validated, only that source started) → undo (one click).

One search runs at a time for the whole gateway. Ports that a configured source already uses are never probed:
a second opener would disturb its polling.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..pairing import PairingError
from .markup import escape

if TYPE_CHECKING:
    from ..daemon import Gateway

log = logging.getLogger("koto.web")

SEARCH_LIMIT_S = 180.0  # a search never runs longer than this
READ_LIMIT_S = 10.0  # how long "read it now" waits for the meter's first power reading
BAUDS = (9600, 2400)
TIMEOUT_S = 0.3


@dataclass
class Search:
    ports: list[str]
    started: float
    lines: list[str] = field(default_factory=list)
    found: list[Any] = field(default_factory=list)  # drivers.discover_serial.Found
    done: bool = False
    problem: str = ""
    task: asyncio.Task[None] | None = None

    @property
    def now(self) -> str:
        return self.lines[-1] if self.lines else "starting"


def parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            raise PairingError(f"{text!r}: give addresses as numbers and ranges, such as 1-10") from None
    if not out or any(not 1 <= a <= 248 for a in out) or len(out) > 248:
        raise PairingError("addresses are 1 to 247 (248: a PZEM-004T's general address)")
    return out


def claimed_ports(gw: Gateway) -> set[str]:
    return {os.path.realpath(str(s["port"])) for a in gw.cfg.appliances for s in a.sources.values() if "port" in s}


def free_ports(gw: Gateway) -> list[str]:
    """Serial ports on this machine that no configured source uses (by their stable paths)."""
    try:
        from drivers.discover_serial import list_ports

        listed = [p.stable_path for p in list_ports()]
    except ImportError:
        return []
    taken = claimed_ports(gw)
    return [p for p in listed if os.path.realpath(p) not in taken]


class PairFlow:
    def __init__(self, gw: Gateway) -> None:
        from ..pairing import HotAdd

        self.gw = gw
        self.hot = HotAdd(gw)
        self.search: Search | None = None

    def start_search(self, ports_text: str, addresses_text: str) -> None:
        if self.search is not None and not self.search.done:
            raise PairingError("a search is already running; wait for it to finish")
        ports = [p for p in re.split(r"[,\s]+", ports_text.strip()) if p] or free_ports(self.gw)
        if not ports:
            raise PairingError("no free serial port found: plug in the USB RS-485 adapter, or type the port")
        taken = claimed_ports(self.gw)
        busy = [p for p in ports if os.path.realpath(p) in taken]
        if busy:
            raise PairingError(f"{', '.join(busy)} is used by an appliance already; it is not searched")
        missing = [p for p in ports if not os.path.exists(p)]
        if missing:
            raise PairingError(f"no such serial port: {', '.join(missing)}")
        addresses = parse_ranges(addresses_text or "1-10")
        search = Search(ports, time.monotonic())
        search.task = asyncio.create_task(self._run(search, addresses), name="pairing search")
        self.search = search

    async def _run(self, search: Search, addresses: list[int]) -> None:
        from drivers.discover_serial import MODEL_NAMES, Step, survey

        def on_step(step: Step) -> None:
            if step.problem:
                search.lines.append(f"{step.port}: {step.problem}")
            elif step.found is not None:
                name = MODEL_NAMES.get(step.found.model or "", "a meter of unknown model")
                search.lines.append(f"found {name} at address {step.address}")
            elif step.address is None:
                search.lines.append(f"searching {step.port} at {step.baud} baud")
            else:
                search.lines.append(f"searching {step.port} at {step.baud} baud: address {step.address}")
            del search.lines[:-50]

        try:
            async with asyncio.timeout(SEARCH_LIMIT_S):
                result = await survey(search.ports, addresses=addresses, bauds=BAUDS, timeout_s=TIMEOUT_S,
                                      on_step=on_step)
            search.found = [f for f in result.found if f.model]
            if not search.found:
                search.problem = ("no meter answered. Check the wiring (A and B swapped is common), that the meter "
                                  "has power, and its address and baud rate in its display menu")
        except TimeoutError:
            search.problem = f"the search took longer than {SEARCH_LIMIT_S:g} s and was stopped"
        except Exception as e:  # a port that vanished mid-search: said on the page, the daemon goes on
            search.problem = f"the search failed: {e}"
            log.warning("pairing search failed: %s", e)
        finally:
            search.done = True

    def found(self, index: int) -> Any:
        if self.search is None or not self.search.done or not 0 <= index < len(self.search.found):
            raise PairingError("that meter is not in the search results any more; search again")
        return self.search.found[index]

    @staticmethod
    def source_cfg(found: Any) -> dict[str, Any]:
        return {"driver": "modbus", "model": found.model, "port": found.port, "address": found.address,
                "baud": found.baud}

    async def read_now(self, found: Any) -> str:
        """One power reading from the meter, said in words: the installer's proof that it is the right meter."""
        from drivers.base import build_source
        from drivers.errors import DriverConfigError
        from koto.reading import Quantity

        last = "it sent no power reading"
        try:
            async with asyncio.timeout(READ_LIMIT_S):
                while True:  # a reply lost on the line is tried again, as the daemon would, until the limit
                    try:
                        src = build_source("pairing-check", self.source_cfg(found), clock=self.gw.clock)
                    except DriverConfigError as e:
                        raise PairingError(f"this meter cannot be read: {e}") from e
                    try:
                        async with src:
                            async for r in src:
                                if r.quantity is Quantity.POWER_MW and isinstance(r.value, int) and not r.signal:
                                    return f"{r.value / 1000:.1f} W"
                    except Exception as e:
                        last = str(e) or type(e).__name__
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise PairingError(f"the meter could not be read within {READ_LIMIT_S:g} s ({last})") from None

    async def close(self) -> None:
        if self.search is not None and self.search.task is not None:
            from ..supervisor import stop_tasks

            await stop_tasks([self.search.task])  # it polls through pymodbus, whose wait_for can swallow a cancel


# ------------------------------------------------------------------------------------------------ HTML


def _hidden(csrf: str) -> str:
    return f"<input type=\"hidden\" name=\"csrf\" value=\"{escape(csrf)}\">"


def pair_body(flow: PairFlow, csrf: str, profiles: list[str], *, problem: str = "", pairing: bool,
              confirm: dict[str, str] | None = None) -> str:
    """The pairing page: search form, progress or results, and the confirm step when a meter was read."""
    parts = ["<p><a href=\"/\">Back to the status</a></p>"]
    if problem:
        parts.append(f"<p class=\"error\" role=\"alert\">{escape(problem)}</p>")
    mode = ("<p>Pairing mode is on.</p><form method=\"post\" action=\"/pairing\">"
            f"{_hidden(csrf)}<input type=\"hidden\" name=\"on\" value=\"0\"><button type=\"submit\">Turn pairing "
            "mode off</button></form>") if pairing else (
            "<form method=\"post\" action=\"/pairing\">"
            f"{_hidden(csrf)}<input type=\"hidden\" name=\"on\" value=\"1\"><button type=\"submit\">Turn pairing "
            "mode on (10 minutes)</button></form>")
    parts.append(f"<section class=\"card\" aria-labelledby=\"h-mode\"><h2 id=\"h-mode\">Pairing mode</h2>{mode}"
                 "</section>")
    if confirm is not None:
        parts.append(_confirm(confirm, csrf))
    s = flow.search
    if s is not None and not s.done:
        parts.append("<section class=\"card\" aria-labelledby=\"h-search\"><h2 id=\"h-search\">Searching…</h2>"
                     f"<p role=\"status\" data-live=\"search\">{escape(s.now)}</p>"
                     f"<p class=\"muted\">{len(s.lines)} steps so far; this page refreshes by itself.</p>"
                     "</section>")
    elif s is not None and s.found:
        parts.append(_results(s, csrf, profiles))
    elif s is not None and s.problem:
        parts.append(f"<p class=\"error\" role=\"alert\">{escape(s.problem)}</p>")
    ports = ", ".join(free_ports(flow.gw))
    parts.append(
        "<section class=\"card\" aria-labelledby=\"h-find\"><h2 id=\"h-find\">1. Find the meter</h2>"
        f"<form method=\"post\" action=\"/pair/search\">{_hidden(csrf)}"
        "<label for=\"ports\">Serial ports to search (empty: every free port)</label>"
        f"<input id=\"ports\" name=\"ports\" value=\"{escape(ports)}\">"
        "<label for=\"addresses\">Meter addresses</label>"
        "<input id=\"addresses\" name=\"addresses\" value=\"1-10\">"
        "<button type=\"submit\">Search</button></form></section>")
    if flow.hot.added:
        forms = "".join(
            f"<form method=\"post\" action=\"/pair/undo\" class=\"undo\">{_hidden(csrf)}<input type=\"hidden\" "
            f"name=\"appliance\" value=\"{escape(a)}\"><button type=\"submit\">Undo: remove {escape(a)}</button>"
            "</form>" for a in flow.hot.added)
        parts.append(f"<section class=\"card\" aria-labelledby=\"h-undo\"><h2 id=\"h-undo\">Added on this page"
                     f"</h2>{forms}</section>")
    return "".join(parts)


def _results(s: Search, csrf: str, profiles: list[str]) -> str:
    from drivers.discover_serial import MODEL_NAMES

    radios = "".join(
        f"<div class=\"choice\"><input type=\"radio\" id=\"meter-{i}\" name=\"meter\" value=\"{i}\""
        f"{' checked' if i == 0 else ''}><label for=\"meter-{i}\">{escape(MODEL_NAMES.get(f.model, f.model))} "
        f"on {escape(f.port)}, address {f.address}, {f.baud} baud</label></div>" for i, f in enumerate(s.found))
    options = "".join(f"<option value=\"{escape(p)}\">{escape(p.replace('_', ' '))}</option>" for p in profiles)
    return ("<section class=\"card\" aria-labelledby=\"h-pick\"><h2 id=\"h-pick\">2. Pick the meter and name "
            f"the appliance</h2><form method=\"post\" action=\"/pair/read\">{_hidden(csrf)}"
            f"<fieldset><legend>Meters found</legend>{radios}</fieldset>"
            "<label for=\"name\">Appliance name (letters, digits, - and _)</label>"
            "<input id=\"name\" name=\"name\" required pattern=\"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\">"
            f"<label for=\"profile\">Appliance type</label><select id=\"profile\" name=\"profile\">{options}"
            "</select><button type=\"submit\">Read it now</button></form></section>")


def _confirm(c: dict[str, str], csrf: str) -> str:
    hidden = "".join(f"<input type=\"hidden\" name=\"{escape(k)}\" value=\"{escape(v)}\">"
                     for k, v in c.items() if k in ("meter", "name", "profile"))
    return ("<section class=\"card confirm\" aria-labelledby=\"h-confirm\"><h2 id=\"h-confirm\">3. Is this the "
            f"right meter?</h2><p role=\"status\">{escape(c['what'])} reads <strong data-live=\"reading\">"
            f"{escape(c['reading'])}</strong> now. Switch the appliance on or off and read again to be sure.</p>"
            f"<form method=\"post\" action=\"/pair/read\">{_hidden(csrf)}{hidden}<button type=\"submit\">Read "
            f"again</button></form><form method=\"post\" action=\"/pair/save\">{_hidden(csrf)}{hidden}"
            f"<button type=\"submit\">Save {escape(c['name'])} and start metering</button></form></section>")
