"""The 30-day chart, drawn on the server as SVG: stacked bars of energy per day, one colour per function.

Server-rendered so that it shows with JavaScript off and costs the browser nothing; presentation attributes only
(no inline style), so the page's Content-Security-Policy can forbid inline styles. The SVG carries a title and a
description that says the totals in words for a screen reader; each bar has a <title> with its figure.
"""

from __future__ import annotations

from .markup import escape

# Colours that keep >= 3:1 against the white card (WCAG's contrast for graphics) and stay apart for common
# colour-vision deficiencies (the Okabe-Ito palette, darkened where needed).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8F6A00", "#56458C", "#A6403A", "#5A5A5A")
MIN_MWH = 5000  # a series with less over the 30 days (a few Wh of standby) is not drawn: it would not show
W, H = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 12, 28


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    step = 10 ** len(str(int(v))) / 10 if v >= 1 else 0.1
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * step:
            return m * step
    return 10 * step


def colours(series: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(series)}


def chart_svg(days: list[str], daily: dict[tuple[str, str], list[int]]) -> str:
    """An SVG element (a string) with one stacked bar per day; `daily[(appliance, function)]` in mWh per day."""
    series = drawn(daily)
    colour = colours(series)
    n = max(1, len(days))
    totals = [sum(daily[k][i] for k in series) / 1e6 for i in range(len(days))]
    top = _nice_max(max(totals, default=0.0))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    bw = plot_w / n
    total_kwh = sum(totals)
    desc = (f"Energy per day over the last {len(days)} days, {total_kwh:.2f} kWh in all"
            + ("; " + ", ".join(f"{a} {f}: {sum(daily[(a, f)]) / 1e6:.2f} kWh" for a, f in series) if series else
               "; nothing was used"))
    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="chart-title chart-desc" '
           'xmlns="http://www.w3.org/2000/svg">',
           '<title id="chart-title">Energy per day, last 30 days</title>',
           f'<desc id="chart-desc">{escape(desc)}</desc>']
    for i in range(5):  # grid and axis labels
        v = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#d0d4d9" '
                   'stroke-width="1"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#333">'
                   f'{v:g}</text>')
    out.append(f'<text x="4" y="{TOP + 4}" font-size="11" fill="#333">kWh</text>')
    for i, day in enumerate(days):
        x = LEFT + i * bw
        y = TOP + plot_h
        for key in series:
            kwh = daily[key][i] / 1e6
            if kwh <= 0:
                continue
            h = plot_h * kwh / top
            y -= h
            out.append(f'<rect class="bar" data-function="{escape(key[0])}/{escape(key[1])}" x="{x + 1:.1f}" '
                       f'y="{y:.1f}" width="{max(bw - 2, 1):.1f}" height="{max(h, 0.5):.1f}" '
                       f'fill="{colour[key]}"><title>{escape(day)} {escape(key[0])} {escape(key[1])}: '
                       f'{kwh:.3f} kWh</title></rect>')
        if i % 7 == (len(days) - 1) % 7:  # a date label every week, the last day included
            out.append(f'<text x="{x + bw / 2:.1f}" y="{H - 8}" text-anchor="middle" font-size="11" '
                       f'fill="#333">{escape(day[5:])}</text>')
    out.append("</svg>")
    return "".join(out)


def drawn(daily: dict[tuple[str, str], list[int]]) -> list[tuple[str, str]]:
    return sorted(k for k, v in daily.items() if sum(v) >= MIN_MWH)


def legend_html(daily: dict[tuple[str, str], list[int]]) -> str:
    series = drawn(daily)
    colour = colours(series)
    items = "".join(f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" '
                    f'fill="{colour[k]}"/></svg>{escape(k[0])}: {escape(k[1])}</li>' for k in series)
    return f'<ul class="legend">{items}</ul>' if items else ""
