"""The status page's routes, on microdot (asyncio, tiny: see docs/household.md for why not aiohttp).

    GET  /                 the status page (read-only, no login, works without JavaScript)
    GET  /api/live         live values as JSON (static/page.js polls it)
    GET  /static/...       page.css, page.js (bundled; nothing from the internet)
    GET  /login, POST /login, POST /logout     the installer's PIN → a session cookie
    GET  /pair, POST /pair/search|read|save|undo, POST /pairing     adding an appliance (PIN needed)

Sessions are random tokens held in memory (a restart logs everyone out), sent as an HttpOnly, SameSite=Strict
cookie; every POST carries the session's CSRF token in a hidden field and is refused without it, and a browser's
Sec-Fetch-Site must not say cross-site. PIN tries are rate-limited per client address (`pin.Tries`).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microdot import Microdot, Request, Response  # type: ignore[import-untyped,unused-ignore]

from ..pairing import PairingError
from . import render
from .learnflow import LearnFlow, learn_body
from .model import PageData
from .pairflow import PairFlow, pair_body
from .pin import PinError, Tries, load_pin_hash, verify_pin

if TYPE_CHECKING:
    from ..daemon import Gateway

log = logging.getLogger("koto.web")

STATIC = Path(__file__).parent / "static"
SESSION_S = 3600.0
COOKIE = "koto_session"
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HTML = "text/html; charset=utf-8"


class Sessions:
    """Session token → (csrf token, installer?, expiry). A visitor gets a session on first GET (for the CSRF
    token of the login form); the PIN makes it an installer's."""

    def __init__(self) -> None:
        self._s: dict[str, dict[str, Any]] = {}

    def get(self, req: Request) -> tuple[str, dict[str, Any]] | None:
        tok = req.cookies.get(COOKIE, "")
        s = self._s.get(tok)
        if s is None or s["expires"] < time.monotonic():
            self._s.pop(tok, None)
            return None
        return tok, s

    def new(self) -> tuple[str, dict[str, Any]]:
        now = time.monotonic()
        for t in [t for t, s in self._s.items() if s["expires"] < now]:
            del self._s[t]
        while len(self._s) >= 500:  # bounded
            del self._s[next(iter(self._s))]
        tok = secrets.token_urlsafe(32)
        s = {"csrf": secrets.token_urlsafe(32), "installer": False, "expires": now + SESSION_S, "flash": "",
             "confirm": None}
        self._s[tok] = s
        return tok, s

    def drop(self, tok: str) -> None:
        self._s.pop(tok, None)


def _cookie(resp: Response, tok: str) -> Response:
    resp.headers["Set-Cookie"] = f"{COOKIE}={tok}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(SESSION_S)}"
    return resp


Handler = Callable[..., Awaitable[Response]]


def route(app: Microdot, method: str, path: str) -> Callable[[Handler], Handler]:
    """microdot's route decorator, typed."""
    def add(f: Handler) -> Handler:
        app.route(path, methods=[method])(f)
        return f
    return add


@dataclass
class WebApp:
    app: Microdot
    data: PageData
    flow: PairFlow
    learn: LearnFlow


def build_app(gw: Gateway) -> WebApp:
    app = Microdot()
    data = PageData(gw)
    flow = PairFlow(gw)
    learning = LearnFlow(gw)
    sessions = Sessions()
    tries = Tries()
    title = "Home appliances"

    def session(req: Request) -> tuple[str, dict[str, Any], bool]:
        got = sessions.get(req)
        if got is None:
            tok, s = sessions.new()
            return tok, s, True
        return got[0], got[1], False

    def html(body: str, *, status: int = 200, cookie: str | None = None) -> Response:
        resp = Response(body, status_code=status, headers={"Content-Type": HTML})
        return _cookie(resp, cookie) if cookie else resp

    def redirect(to: str) -> Response:
        return Response.redirect(to, status_code=303)

    async def headers(req: Request, resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    async def check_post(req: Request) -> Response | None:
        if req.method != "POST":
            return None
        if req.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return Response("refused: a request from another site", status_code=403)
        got = sessions.get(req)
        form = req.form or {}
        if got is None or not hmac.compare_digest(str(form.get("csrf", "")), got[1]["csrf"]):
            return Response("refused: the form is out of date; reload the page and try again", status_code=403)
        return None

    app.after_request(headers)
    app.before_request(check_post)

    def installer(req: Request) -> dict[str, Any] | None:
        got = sessions.get(req)
        return got[1] if got is not None and got[1]["installer"] else None

    def installer_route(method: str, path: str) -> Callable[[Handler], Handler]:
        """A route for the installer only: without an installer session it goes to the login page; the handler
        gets the session as its second argument. (The POST's origin and CSRF token are checked before any route,
        in `check_post`.)"""
        def add(f: Handler) -> Handler:
            @functools.wraps(f)
            async def guarded(req: Request, *args: Any, **kw: Any) -> Response:
                if (s := installer(req)) is None:
                    return redirect("/login")
                return await f(req, s, *args, **kw)
            return route(app, method, path)(guarded)
        return add

    @route(app, "GET", "/")
    async def index(req: Request) -> Response:
        got = sessions.get(req)  # a reader needs no session: only the login page starts one
        s: dict[str, Any] = got[1] if got is not None else {"csrf": "", "installer": False, "flash": ""}
        live = data.live()
        fig = await data.figures()
        flash, s["flash"] = s["flash"], ""
        undo = list(flow.hot.added) if s["installer"] else []
        body = render.status_body(live, fig, gw.cfg.tz, installer=s["installer"], csrf=s["csrf"], flash=flash,
                                  undo=undo)
        return html(render.page(title, body, refresh=True, gateway=f"gateway {gw.cfg.id}"))

    @route(app, "GET", "/api/live")
    async def api_live(req: Request) -> Response:
        live = data.live()
        fig = await data.figures()
        body = {"now": live["now"], "pairing": live["pairing"],
                "appliances": {aid: {"function": a["function"] or "idle", "power": render.fmt_w(a["power_mw"]),
                                     "power_mw": a["power_mw"], "locked": bool(a["lock"])}
                               for aid, a in live["appliances"].items()},
                "health": [{"level": lvl, "text": t} for lvl, t in render.health_lines(live, fig)],
                "cloud": None if live["cloud"] is None else
                ("Connected" if live["cloud"]["connected"] else "Not connected")}
        return Response(json.dumps(body), headers={"Content-Type": "application/json"})

    @route(app, "GET", "/static/<name>")
    async def static(req: Request, name: str) -> Response:
        if name not in ("page.css", "page.js"):
            return Response("not found", status_code=404)
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        resp = Response.send_file(str(STATIC / name), content_type=f"{kind}; charset=utf-8")
        resp.headers["Cache-Control"] = "max-age=300"
        return resp

    @route(app, "GET", "/login")
    async def login_form(req: Request) -> Response:
        tok, s, fresh = session(req)
        return html(render.page(title, render.login_body(s["csrf"]), script=False), cookie=tok if fresh else None)

    @route(app, "POST", "/login")
    async def login(req: Request) -> Response:
        tok, s = sessions.get(req) or sessions.new()  # check_post made sure there is one
        client = str(req.client_addr[0]) if req.client_addr else "?"
        wait = tries.wait_s(client)
        if wait > 0:
            return html(render.page(title, render.login_body(
                s["csrf"], f"Too many wrong PINs: wait {wait:.0f} s and try again."), script=False), status=429)
        try:
            stored = load_pin_hash(gw.cfg.state_dir)
        except PinError as e:
            return html(render.page(title, render.login_body(s["csrf"], str(e)), script=False), status=500)
        if stored is None:
            return html(render.page(title, render.login_body(
                s["csrf"], "No installer PIN is set on this gateway: set one with `koto provision --set-pin`."),
                script=False), status=403)
        pin = str((req.form or {}).get("pin", ""))
        if not verify_pin(pin, stored):
            tries.failed(client)
            log.warning("status page: wrong installer PIN from %s", client)
            return html(render.page(title, render.login_body(s["csrf"], "That PIN is not right."), script=False),
                        status=403)
        tries.succeeded(client)
        sessions.drop(tok)  # a new session id at login: a token seen before login is worth nothing after
        tok, s = sessions.new()
        s["installer"] = True
        log.info("status page: installer logged in from %s", client)
        return _cookie(redirect("/pair" if gw.pairing.active else "/"), tok)

    @route(app, "POST", "/logout")
    async def logout(req: Request) -> Response:
        got = sessions.get(req)
        if got is not None:
            sessions.drop(got[0])
        return redirect("/")

    def pair_page(req: Request, s: dict[str, Any], problem: str = "", status: int = 200) -> Response:
        from metering.profile import builtin_profiles

        searching = flow.search is not None and not flow.search.done
        body = pair_body(flow, s["csrf"], sorted(builtin_profiles()), problem=problem, pairing=gw.pairing.active,
                         confirm=s.get("confirm"))
        resp = html(render.page("Add an appliance", body, script=False, gateway=f"gateway {gw.cfg.id}"),
                    status=status)
        if searching:
            resp.headers["Refresh"] = "2"
        return resp

    @installer_route("GET", "/pair")
    async def pair(req: Request, s: dict[str, Any]) -> Response:
        return pair_page(req, s)

    @installer_route("POST", "/pairing")
    async def pairing_mode(req: Request, s: dict[str, Any]) -> Response:
        if str((req.form or {}).get("on")) == "1":
            gw.pairing.enter(time.monotonic())
        else:
            gw.pairing.leave()
        return redirect("/pair")

    @installer_route("POST", "/pair/search")
    async def pair_search(req: Request, s: dict[str, Any]) -> Response:
        form = req.form or {}
        try:
            flow.start_search(str(form.get("ports", "")), str(form.get("addresses", "")))
        except PairingError as e:
            return pair_page(req, s, e.problem, 400)
        s["confirm"] = None
        return redirect("/pair")

    @installer_route("POST", "/pair/read")
    async def pair_read(req: Request, s: dict[str, Any]) -> Response:
        form = req.form or {}
        try:
            found = flow.found(int(str(form.get("meter", "-1"))))
            name, profile = str(form.get("name", "")), str(form.get("profile", ""))
            _check_name(gw, name)
            reading = await flow.read_now(found)
        except (PairingError, ValueError) as e:
            return pair_page(req, s, getattr(e, "problem", str(e)), 400)
        from drivers.discover_serial import MODEL_NAMES

        s["confirm"] = {"meter": str(form.get("meter")), "name": name, "profile": profile, "reading": reading,
                        "what": f"{MODEL_NAMES.get(found.model, found.model)} at address {found.address}"}
        return pair_page(req, s)

    @installer_route("POST", "/pair/save")
    async def pair_save(req: Request, s: dict[str, Any]) -> Response:
        form = req.form or {}
        try:
            found = flow.found(int(str(form.get("meter", "-1"))))
            name = _check_name(gw, str(form.get("name", "")))
            flow.hot.add(name, str(form.get("profile", "")), f"{name}-meter", flow.source_cfg(found))
        except (PairingError, ValueError) as e:
            return pair_page(req, s, getattr(e, "problem", str(e)), 400)
        s["confirm"] = None
        flow.search = None
        gw.pairing.leave()
        s["flash"] = f"{name} was added and is being metered now. Wrong meter? Undo removes it again."
        return redirect("/")

    @installer_route("POST", "/pair/undo")
    async def pair_undo(req: Request, s: dict[str, Any]) -> Response:
        aid = str((req.form or {}).get("appliance", ""))
        try:
            await flow.hot.undo(aid)
        except PairingError as e:
            return pair_page(req, s, e.problem, 400)
        s["flash"] = f"{aid} was removed again; what it metered stays in the records."
        return redirect("/")

    def learn_page(s: dict[str, Any], problem: str = "", status: int = 200) -> Response:
        fns = {aid: list(m.profile.function_names()) for aid, m in gw.meters.items()}
        body = learn_body(learning, s["csrf"], fns, gw.cfg.tz, problem=problem)
        resp = html(render.page("Learn a function", body, script=False, gateway=f"gateway {gw.cfg.id}"),
                    status=status)
        if learning.active is not None or learning.deriving:
            resp.headers["Refresh"] = "2"
        return resp

    @installer_route("GET", "/learn")
    async def learn(req: Request, s: dict[str, Any]) -> Response:
        return learn_page(s)

    @installer_route("POST", "/learn/<step>")
    async def learn_step(req: Request, s: dict[str, Any], step: str) -> Response:
        form = req.form or {}
        try:
            if step == "start":
                learning.start(str(form.get("appliance", "")), str(form.get("function", "")).strip())
            elif step == "stop":
                await learning.stop()
            elif step == "save":
                s["flash"] = learning.save()
                return redirect("/")
            elif step == "discard":
                learning.discard()
            else:
                return Response("not found", status_code=404)
        except PairingError as e:
            return learn_page(s, e.problem, 400)
        return redirect("/learn")

    return WebApp(app, data, flow, learning)


def _check_name(gw: Gateway, name: str) -> str:
    from ..config import ID_RE

    if not ID_RE.match(name):
        raise PairingError("the name uses letters, digits, '-', '_' and '.', and starts with a letter or digit")
    if name in gw.meters:
        raise PairingError(f"there is already an appliance called {name}; choose another name")
    return name
