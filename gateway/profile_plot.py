"""Draw a replayed timeline: a power plot with the detected functions under it, in the terminal or as SVG.

Power is drawn on a log scale (1 W to the peak) because the phases that matter differ by decades: a 2 kW heater,
50 W of tumbling and 3 W of electronics must all be visible. Each column of the terminal plot is one slice of time:
its bar is the highest reading in the slice, its letter the function that had most of the slice.
"""

from __future__ import annotations

import math
from datetime import datetime, tzinfo
from xml.sax.saxutils import escape

from .profile_replay import GAP, Timeline

BLOCKS = " ▁▂▃▄▅▆▇█"
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")


def letters(names: list[str]) -> dict[str, str]:
    """A distinct letter per function: its first letter if free, else another of its letters, else a digit."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for n in names:
        pick = next((c for c in n.upper() + n.lower() if c.isalpha() and c not in used), None)
        pick = pick or next(str(d) for d in range(10) if str(d) not in used)
        out[n] = pick
        used.add(pick)
    out[GAP] = "·"
    return out


def _level(mw: int, top_mw: int) -> float:
    """0..1 on a log scale from 1 W to `top_mw`."""
    if mw <= 1000:
        return mw / 1000 * 0.05
    return min(1.0, 0.05 + 0.95 * math.log10(mw / 1000) / max(1e-9, math.log10(top_mw / 1000)))


def _columns(tl: Timeline, width: int) -> tuple[list[int], list[str], float]:
    t0, t1 = tl.start, tl.end
    step = max(1e-9, (t1 - t0) / width)
    peak = [0] * width
    for p in tl.points:
        i = min(width - 1, int((p.t - t0) / step))
        peak[i] = max(peak[i], p.power_mw or 0)
    share: list[dict[str, float]] = [{} for _ in range(width)]
    for s in tl.spans:
        a = max(0, int((s.start - t0) / step))
        b = min(width - 1, int((s.end - t0) / step))
        for i in range(a, b + 1):
            lo, hi = max(s.start, t0 + i * step), min(s.end, t0 + (i + 1) * step)
            if hi > lo or s.seconds == 0:
                share[i][s.function] = share[i].get(s.function, 0.0) + max(hi - lo, 1e-9)
    fns = [max(sh, key=lambda k: sh[k]) if sh else "" for sh in share]
    return peak, fns, step


def render_terminal(tl: Timeline, tz: tzinfo, *, width: int = 100, height: int = 8) -> list[str]:
    """The plot as lines of text: power bars (log scale), the function letters, a time axis, the legend."""
    if not tl.points:
        return ["(no power readings in this period)"]
    width = max(10, min(width, len(tl.points)))
    peak, fns, _ = _columns(tl, width)
    top = max(max(peak), 2000)
    lines: list[str] = []
    levels = [_level(p, top) * height for p in peak]
    for row in range(height, 0, -1):
        label = f"{top / 1000:>6.0f} W " if row == height else ("   1 W  " if row == 1 else " " * 8)
        cells = []
        for lv in levels:
            fill = lv - (row - 1)
            cells.append("█" if fill >= 1 else BLOCKS[max(0, min(8, round(fill * 8)))])
        lines.append(label + "|" + "".join(cells))
    key = letters(tl.profile.function_names())
    lines.append(" " * 8 + "|" + "".join(key.get(f, " ") if f else " " for f in fns))
    a = datetime.fromtimestamp(tl.start, tz).strftime("%H:%M")
    m = datetime.fromtimestamp((tl.start + tl.end) / 2, tz).strftime("%H:%M")
    b = datetime.fromtimestamp(tl.end, tz).strftime("%H:%M")
    gap = max(1, (width - len(a) - len(m) - len(b)) // 2)
    lines.append(" " * 9 + a + " " * gap + m + " " * (width - len(a) - len(m) - len(b) - gap) + b)
    shown = [f for f in key if f in fns]
    lines.append("         " + "  ".join(f"{key[f]} {f}" for f in shown))
    return lines


def render_svg(tl: Timeline, tz: tzinfo, *, width: int = 1000, height: int = 320) -> str:
    """A standalone SVG: function bands behind the power line (log scale), uses marked on top, a legend."""
    pad_l, pad_r, pad_t, pad_b = 60, 10, 30, 60
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    t0, t1 = tl.start, max(tl.end, tl.start + 1)
    top = max([p.power_mw or 0 for p in tl.points] + [2000_000])

    def x(t: float) -> float:
        return pad_l + (t - t0) / (t1 - t0) * w

    def y(mw: int) -> float:
        return pad_t + h - _level(mw, top) * h

    names = tl.profile.function_names()
    colour = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    colour[GAP] = "#dddddd"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for s in tl.spans:
        out.append(f'<rect x="{x(s.start):.1f}" y="{pad_t}" width="{max(0.5, x(s.end) - x(s.start)):.1f}" '
                   f'height="{h}" fill="{colour.get(s.function, "#cccccc")}" fill-opacity="0.25">'
                   f'<title>{escape(s.function)} {s.seconds:.0f} s, {s.energy_mwh / 1e6:.3f} kWh</title></rect>')
    for u in tl.uses:
        out.append(f'<line x1="{x(u.start):.1f}" x2="{x(u.end):.1f}" y1="{pad_t - 8}" y2="{pad_t - 8}" '
                   f'stroke="black" stroke-width="3"><title>use: {u.energy_mwh / 1e6:.3f} kWh</title></line>')
    pts = " ".join(f"{x(p.t):.1f},{y(p.power_mw or 0):.1f}" for p in tl.points)
    out.append(f'<polyline points="{pts}" fill="none" stroke="black" stroke-width="1"/>')
    for mw in (1000, 10_000, 100_000, 1_000_000):
        if mw < top:
            out.append(f'<text x="{pad_l - 5}" y="{y(mw) + 4:.1f}" text-anchor="end">{mw // 1000} W</text>'
                       f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y(mw):.1f}" y2="{y(mw):.1f}" stroke="#eeeeee"/>')
    for k in range(5):
        t = t0 + (t1 - t0) * k / 4
        out.append(f'<text x="{x(t):.1f}" y="{pad_t + h + 15}" text-anchor="middle">'
                   f'{datetime.fromtimestamp(t, tz).strftime("%H:%M")}</text>')
    lx = pad_l
    for n in [*names, GAP]:
        if any(s.function == n for s in tl.spans):
            out.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{colour[n]}" '
                       f'fill-opacity="0.5"/><text x="{lx + 16}" y="{height - 12}">{escape(n)}</text>')
            lx += 30 + 7 * len(n)
    out.append(f'<text x="{pad_l}" y="15">{escape(tl.profile.name)}: {len(tl.uses)} use(s); black bars: uses'
               '</text></svg>')
    return "\n".join(out) + "\n"
