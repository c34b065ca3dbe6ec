"""Learn mode on the page: pick an appliance and a function name, start, run the function on the appliance, stop
(or let it stop by itself once the appliance is back at rest), look at the trace and the rule on a chart, save.

The learning is gateway/learn.py's, the same as `koto learn`: a `LearnSession` follows the readings, `cut_recording`
splits the daemon's power ring (gateway/power_log.py) at the marks, `derive_rule` derives the band and dwell rule
and checks it by replaying, `save_learned` writes the appliance's own profile, which the meter uses from the
gateway's next start. Here the readings come straight from the running daemon's ring, in memory: a small task
feeds the new ones to the session every second, and deriving (which replays hours of history) runs in a thread.
One recording at a time for the whole gateway; it stops by itself after `MAX_S` whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pairing import PairingError
from .markup import escape

if TYPE_CHECKING:
    from ..daemon import Gateway
    from ..learn import Learned, LearnSession

log = logging.getLogger("koto.web")

MAX_S = 4 * 3600.0  # a recording stops after this (the daemon's clock)
FOLLOW_S = 1.0  # how often new readings are fed to the session (real seconds)
STATE_WORDS = {"waiting": "waiting for the appliance to start", "running": "the appliance is running",
               "rested": "the appliance is back at rest", "stopped": "stopped"}


@dataclass
class Active:
    appliance: str
    function: str
    start: float  # wall seconds (the daemon's clock)
    session: LearnSession
    last_t: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class LearnFlow:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.active: Active | None = None
        self.learned: Learned | None = None
        self.problem = ""
        self.deriving = False

    def _ring(self, aid: str) -> Any:
        pl = self.gw.power_log
        ring = pl.rings.get(aid) if pl is not None else None
        if ring is None:
            raise PairingError("learning needs the daemon's power log, which runs with its runtime folder "
                               "(/run/koto under systemd); use `koto learn` on the gateway instead")
        return ring

    def start(self, aid: str, function: str) -> None:
        from ..learn import NAME_RE, LearnSession, cut_recording

        if self.active is not None or self.deriving:
            raise PairingError("a recording is already running; stop it first")
        if aid not in self.gw.meters:
            raise PairingError(f"there is no appliance called {aid!r}")
        if not NAME_RE.match(function):
            raise PairingError("a function name uses letters, digits, '_', '.' and '-' (up to 32)")
        ring = self._ring(aid)
        now = self.gw.clock.now().wall
        before = cut_recording(ring.points(), now, now)  # the minute before the start: where it rests
        session = LearnSession(aid, function, baseline_mw=before.rest_mw)
        self.active = Active(aid, function, now, session, last_t=now)
        self.learned, self.problem = None, ""
        self.active.task = asyncio.create_task(self._follow(self.active), name="learn on the page")
        log.info("%s: learning %r on the status page", aid, function, extra={"appliance": aid})

    async def _follow(self, a: Active) -> None:
        ring = self._ring(a.appliance)
        seen = -1
        while a.session.state not in ("rested", "stopped"):
            if ring.changes != seen:
                seen = ring.changes
                for p in ring.points():
                    if p.t > a.last_t:
                        a.session.feed(p)
                        a.last_t = p.t
            if self.gw.clock.now().wall - a.start > MAX_S:
                break
            await asyncio.sleep(FOLLOW_S)
        await self.stop()

    async def stop(self) -> None:
        """End the recording (the Stop button, the appliance back at rest, or MAX_S) and derive the rule."""
        from ..daemon import load_appliance_profile
        from ..learn import LearnRefused, cut_recording, derive_rule

        a = self.active
        if a is None:
            return
        self.active = None
        if a.task is not None and a.task is not asyncio.current_task():
            a.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a.task
        a.session.stop()
        self.deriving = True
        try:
            ring = self._ring(a.appliance)
            rec = cut_recording(ring.points(), a.start, self.gw.clock.now().wall)
            app = next(x for x in self.gw.cfg.appliances if x.id == a.appliance)
            profile = load_appliance_profile(app, self.gw.cfg.file)
            self.learned = await asyncio.to_thread(
                derive_rule, profile, a.function, rec.samples, appliance=a.appliance,
                rest_mw=rec.rest_mw if rec.rest_mw is not None else a.session.baseline_mw, history=rec.history)
        except LearnRefused as e:
            self.problem = f"Not learned: {e.reason}"
        except (PairingError, StopIteration) as e:
            self.problem = f"Not learned: {getattr(e, 'problem', '') or 'the appliance is gone'}"
        except Exception as e:  # a bug in deriving must not take the page down; said, and logged
            log.warning("learning %r on %s failed: %s", a.function, a.appliance, e)
            self.problem = f"Not learned: {e}"
        finally:
            self.deriving = False

    def save(self) -> str:
        from ..learn import save_learned

        learned = self.learned
        if learned is None:
            raise PairingError("nothing learned to save; record the function first")
        try:
            saved = save_learned(learned, config_path=Path(self.gw.cfg.file), appliance=learned.appliance)
        except (OSError, ValueError) as e:  # ConfigError, ProfileError are ValueErrors; a read-only folder
            raise PairingError(f"not saved: {e}") from e
        self.learned = None
        log.info("%s: learned %r saved to %s", learned.appliance, learned.function, saved.profile_path,
                 extra={"appliance": learned.appliance})
        return (f"Saved {learned.function!r} into {learned.appliance}'s profile ({saved.profile_path}). The "
                "gateway uses it from its next start.")

    def discard(self) -> None:
        self.learned, self.problem = None, ""

    async def close(self) -> None:
        if self.active is not None and self.active.task is not None:
            self.active.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.active.task


# ------------------------------------------------------------------------------------------------ HTML


def _hidden(csrf: str) -> str:
    return f"<input type=\"hidden\" name=\"csrf\" value=\"{escape(csrf)}\">"


def _chart(learned: Learned, tz: Any) -> str:
    """gateway/profile_plot's SVG of the recording replayed with the new rule, made to scale with the page."""
    from ..profile_plot import render_svg

    svg = render_svg(learned.timeline, tz, width=900, height=320)
    label = escape(f"Power while {learned.function} was recorded, with the functions the new rule finds")
    return re.sub(r'<svg xmlns="http://www.w3.org/2000/svg" width="(\d+)" height="(\d+)"',
                  rf'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 \1 \2" role="img" '
                  rf'aria-label="{label}"', svg, count=1)


def learn_body(flow: LearnFlow, csrf: str, appliances: dict[str, list[str]], tz: Any, *, problem: str = "") -> str:
    parts = ["<p><a href=\"/\">Back to the status</a></p>"]
    problem = problem or flow.problem
    if problem:
        parts.append(f"<p class=\"error\" role=\"alert\">{escape(problem)}</p>")
    a = flow.active
    if a is not None or flow.deriving:
        if a is not None:
            s = a.session
            text = (f"Recording {a.function} on {a.appliance}: {STATE_WORDS.get(s.state, s.state)}; "
                    f"{len(s.samples)} readings, peak {s.peak_mw / 1000:.0f} W.")
        else:
            text = "Working out the rule from the recording…"
        parts.append("<section class=\"card wide\" aria-labelledby=\"h-rec\"><h2 id=\"h-rec\">Recording</h2>"
                     f"<p role=\"status\" data-live=\"learn\">{escape(text)}</p><p class=\"muted\">Run the function "
                     "on the appliance now. The recording stops by itself once the appliance has been back at rest "
                     "for half a minute; this page refreshes by itself.</p>"
                     f"<form method=\"post\" action=\"/learn/stop\">{_hidden(csrf)}<button type=\"submit\">Stop "
                     "recording</button></form></section>")
        return "".join(parts)
    if flow.learned is not None:
        lr = flow.learned
        lines = "".join(f"<li>{escape(line.strip())}</li>" for line in lr.summary())
        parts.append(
            f"<section class=\"card wide\" aria-labelledby=\"h-learned\"><h2 id=\"h-learned\">Learned: "
            f"{escape(lr.function)} on {escape(lr.appliance)}</h2>{_chart(lr, tz)}<ul class=\"learned\">{lines}</ul>"
            f"<form method=\"post\" action=\"/learn/save\">{_hidden(csrf)}<button type=\"submit\">Save "
            f"{escape(lr.function)} into {escape(lr.appliance)}'s profile</button></form>"
            f"<form method=\"post\" action=\"/learn/discard\">{_hidden(csrf)}<button type=\"submit\">Discard"
            "</button></form></section>")
    options = "".join(f"<option value=\"{escape(aid)}\">{escape(aid)}</option>" for aid in sorted(appliances))
    known = sorted({f for fns in appliances.values() for f in fns})
    datalist = "".join(f"<option value=\"{escape(f)}\"></option>" for f in known)
    parts.append(
        "<section class=\"card wide\" aria-labelledby=\"h-learn\"><h2 id=\"h-learn\">Learn a function</h2>"
        "<p>Teach the gateway what one of an appliance's functions looks like: with the appliance at rest, start "
        "here, then run the function on the appliance (a new one, or one it gets wrong).</p>"
        f"<form method=\"post\" action=\"/learn/start\">{_hidden(csrf)}"
        f"<label for=\"learn-appliance\">Appliance</label><select id=\"learn-appliance\" name=\"appliance\">"
        f"{options}</select><label for=\"learn-function\">Function name</label>"
        "<input id=\"learn-function\" name=\"function\" list=\"learn-functions\" required maxlength=\"32\">"
        f"<datalist id=\"learn-functions\">{datalist}</datalist>"
        "<button type=\"submit\">Start recording</button></form></section>")
    return "".join(parts)
