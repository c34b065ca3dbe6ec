"""The status page's HTML, written by plain functions with every value escaped.

No template engine: the page is a handful of sections, and the daemon's memory budget (bench/web_rss.py) is
better spent elsewhere than on Jinja's import. Every piece of text a household reads is in plain words; every
control has a visible label. Live values carry `data-live` attributes that static/page.js refreshes from
/api/live; without JavaScript a <noscript> meta refresh reloads the whole page instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from koto.money import fmt_costs

from .chart import chart_svg, legend_html
from .markup import escape
from .model import STALE_SOURCE_S, Figures

NOSCRIPT_REFRESH_S = 10


def fmt_w(mw: int) -> str:
    w = mw / 1000
    return f"{w:.0f} W" if w >= 10 else f"{w:.1f} W"


def fmt_kwh(mwh: int) -> str:
    return f"{mwh / 1e6:.2f} kWh"


def fmt_cost(costs: dict[str, int], known: dict[str, int] | None = None) -> str:
    return fmt_costs(sorted(costs.items()), known, empty="–")


def fmt_when(wall: float | None, tz: Any) -> str:
    if not wall:
        return "never"
    return datetime.fromtimestamp(wall, tz).strftime("%d %b %Y, %H:%M")


def fmt_ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def page(title: str, body: str, *, refresh: bool = False, script: bool = True, gateway: str = "") -> str:
    meta = f'<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH_S}"></noscript>' if refresh else ""
    js = '<script src="/static/page.js" defer></script>' if script else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><link rel=\"stylesheet\" href=\"/static/page.css\">{meta}{js}</head>"
            f"<body><header><h1>{escape(title)}</h1><p class=\"sub\">{escape(gateway)}</p></header>"
            f"<main>{body}</main><footer><p>Koto gateway · this page is served by the gateway itself, on your "
            "home network only</p></footer></body></html>")


def health_lines(live: dict[str, Any], fig: Figures) -> list[tuple[str, str]]:
    """(level, sentence) pairs a household understands: "ok", "warn" or "bad"."""
    out: list[tuple[str, str]] = []
    for name, s in sorted(live["sources"].items()):
        age = s.get("age_s")
        if s["state"] in ("reconnecting", "stopped") or (age is not None and age > STALE_SOURCE_S):
            out.append(("bad", f"{s['appliance']}: no readings from its meter ({name}) for "
                               f"{fmt_ago(age).removesuffix(' ago') if age else 'a while'}. Check that the meter "
                               "has power and its cable is plugged in."))
        elif s["state"] == "starting" or age is None:
            out.append(("warn", f"{s['appliance']}: waiting for the first reading from {name}."))
    if not live["clock_synced"]:
        out.append(("warn", "The clock is not set from the internet yet. Usage is still counted and gets its "
                            "exact time once the clock is set."))
    cloud = live["cloud"]
    if live["configured_cloud"] and (cloud is None or not cloud["connected"]):
        out.append(("warn", "Not connected to the billing service. Nothing is lost: usage is kept here and sent "
                            "when the connection is back."))
    if live["writer_stalled_s"] > 10:
        out.append(("bad", "Saving to the memory card is taking very long. If this stays, call support."))
    if fig.error:
        out.append(("bad", f"The usage history cannot be read right now ({fig.error})."))
    if not out:
        out.append(("ok", "Everything is working: every meter reports and usage is being counted."))
    return out


def _usage_cell(u: dict[str, Any], known: dict[str, int] | None) -> str:
    uses = f"{u['uses']} use{'s' if u['uses'] != 1 else ''} · " if u["uses"] else ""
    return f"{fmt_kwh(u['energy_mwh'])}<br><span class=\"muted\">{uses}{escape(fmt_cost(u['costs'], known))}</span>"


def appliance_cards(live: dict[str, Any], fig: Figures) -> str:
    cards = []
    for aid, a in sorted(live["appliances"].items()):
        fn = a["function"] or "idle"
        rows = []
        fns = sorted({f for (app, f) in (*fig.today, *fig.month) if app == aid})
        zero = {"energy_mwh": 0, "uses": 0, "costs": {}}
        known = live.get("currency_exponents")
        for f in fns:
            t, m = fig.today.get((aid, f), zero), fig.month.get((aid, f), zero)
            if not (m["energy_mwh"] >= 5000 or m["uses"] or any(m["costs"].values())):
                continue  # a few Wh of standby is not worth a line
            rows.append(f"<tr><th scope=\"row\">{escape(f or 'per use')}</th><td>{_usage_cell(t, known)}</td>"
                        f"<td>{_usage_cell(m, known)}</td></tr>")
        table = ("<table class=\"usage\"><caption>Usage and cost per function</caption><thead><tr>"
                 "<th scope=\"col\">function</th><th scope=\"col\">today</th><th scope=\"col\">this month</th>"
                 f"</tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows else
                 "<p class=\"muted\">No usage recorded this month yet.</p>")
        lock = a.get("lock")
        lock_html = ""
        if lock:
            running = (" It is running now: a running programme is never cut off; this use is recorded as not "
                       "unlocked.") if lock["running"] else ""
            lock_html = (f"<div class=\"lock\" role=\"status\"><h3>Locked: {escape(aid)} cannot start</h3>"
                         f"<p><strong>Why:</strong> {escape(lock['reason'])}.{running}</p>"
                         "<p><strong>How to unlock:</strong> unlock it with your provider (in their app or by "
                         "calling them). The gateway receives the unlock over the internet and lets the appliance "
                         "start within a few seconds; nothing needs to be done here.</p></div>")
        cards.append(
            f"<section class=\"card appliance\" id=\"app-{escape(aid)}\" aria-labelledby=\"h-{escape(aid)}\">"
            f"<h2 id=\"h-{escape(aid)}\">{escape(aid)}</h2>"
            f"<p class=\"now\"><span class=\"label\">Now:</span> <span data-live=\"function\" "
            f"data-appliance=\"{escape(aid)}\">{escape(fn)}</span>, <span data-live=\"power\" "
            f"data-appliance=\"{escape(aid)}\">{fmt_w(a['power_mw'])}</span></p>{lock_html}{table}</section>")
    return "".join(cards) or "<p>No appliances are set up yet.</p>"


def entitlements_html(live: dict[str, Any], tz: Any) -> str:
    locked = [aid for aid, a in live["appliances"].items() if a.get("lock")]
    items = []
    for e in live["entitlements"]:
        what = f"{e['appliance']}" + ("" if e["function"] == "*" else f" ({e['function']})")
        left = ""
        if e["remaining"] is not None:
            left = (f", {e['remaining']} uses left" if e["kind"] == "uses" else
                    f", {e['remaining'] / 1e6:.2f} kWh left")
        until = f", until {fmt_when(e['valid_until'], tz)}" if e["valid_until"] else ", with no end date"
        items.append(f"<li><strong>{escape(what)}</strong> is unlocked{escape(left)}{escape(until)}.</li>")
    body = f"<ul>{''.join(items)}</ul>" if items else "<p>No unlocks are active.</p>"
    if locked:
        body += f"<p>Locked now: {escape(', '.join(sorted(locked)))}.</p>"
    return f"<section class=\"card\" aria-labelledby=\"h-ent\"><h2 id=\"h-ent\">Unlocks</h2>{body}</section>"


def cloud_html(live: dict[str, Any], fig: Figures, tz: Any) -> str:
    if not live["configured_cloud"]:
        text = "This gateway counts usage locally only; it is not set up to send it to a billing service."
    else:
        c = live["cloud"] or {}
        state = "Connected" if c.get("connected") else "Not connected"
        backlog = max(0, fig.head_seq - fig.acked_through)
        text = (f"<span data-live=\"cloud\">{state}</span> to the billing service. Last sync: "
                f"{escape(fmt_when(fig.last_ack_wall, tz))}; {backlog} records waiting to be sent.")
        return f"<section class=\"card\" aria-labelledby=\"h-cloud\"><h2 id=\"h-cloud\">Connection</h2><p>{text}</p>" \
               "</section>"
    return f"<section class=\"card\" aria-labelledby=\"h-cloud\"><h2 id=\"h-cloud\">Connection</h2><p>{escape(text)}" \
           "</p></section>"


def status_body(live: dict[str, Any], fig: Figures, tz: Any, *, installer: bool, csrf: str, flash: str = "",
                undo: list[str] | None = None) -> str:
    health = "".join(f"<li class=\"{lvl}\">{escape(text)}</li>" for lvl, text in health_lines(live, fig))
    parts = []
    if flash:
        parts.append(f"<p class=\"flash\" role=\"status\">{escape(flash)}</p>")
    for aid in undo or []:
        parts.append(f"<form method=\"post\" action=\"/pair/undo\" class=\"undo\"><input type=\"hidden\" "
                     f"name=\"csrf\" value=\"{escape(csrf)}\"><input type=\"hidden\" name=\"appliance\" "
                     f"value=\"{escape(aid)}\"><button type=\"submit\">Undo: remove {escape(aid)}</button></form>")
    if live["pairing"]:
        parts.append("<section class=\"card pairing\" aria-labelledby=\"h-pair\"><h2 id=\"h-pair\">Pairing is on"
                     "</h2><p>The gateway is ready to add an appliance. <a href=\"/pair\">Add an appliance</a> "
                     "(installer PIN needed).</p></section>")
    parts.append(f"<section class=\"card wide\" aria-labelledby=\"h-health\"><h2 id=\"h-health\">Health</h2>"
                 f"<ul class=\"health\" data-live=\"health\">{health}</ul></section>")
    parts.append(appliance_cards(live, fig))
    parts.append("<section class=\"card\" aria-labelledby=\"h-chart\"><h2 id=\"h-chart\">Last 30 days</h2>"
                 f"{chart_svg(fig.days, fig.daily)}{legend_html(fig.daily)}</section>")
    parts.append(entitlements_html(live, tz))
    parts.append(cloud_html(live, fig, tz))
    parts.append(installer_html(installer, csrf))
    return "".join(parts)


def installer_html(installer: bool, csrf: str) -> str:
    if installer:
        return ("<section class=\"card\" aria-labelledby=\"h-inst\"><h2 id=\"h-inst\">Installer</h2>"
                "<p><a href=\"/pair\">Add an appliance</a></p><p><a href=\"/learn\">Learn a function</a></p>"
                "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" "
                f"value=\"{escape(csrf)}\"><button type=\"submit\">Log out</button></form></section>")
    return ("<section class=\"card\" aria-labelledby=\"h-inst\"><h2 id=\"h-inst\">Installer</h2>"
            "<p>Changes need the installer's PIN. <a href=\"/login\">Log in as installer</a></p></section>")


def login_body(csrf: str, problem: str = "") -> str:
    err = f"<p class=\"error\" role=\"alert\">{escape(problem)}</p>" if problem else ""
    return ("<section class=\"card\" aria-labelledby=\"h-login\"><h2 id=\"h-login\">Installer login</h2>"
            f"{err}<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" "
            f"value=\"{escape(csrf)}\"><label for=\"pin\">Installer PIN</label>"
            "<input id=\"pin\" name=\"pin\" type=\"password\" inputmode=\"numeric\" autocomplete=\"current-password\" "
            "required><button type=\"submit\">Log in</button></form><p><a href=\"/\">Back to the status</a></p>"
            "</section>")
