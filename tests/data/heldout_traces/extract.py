"""Choose and cut the held-out excerpts in this folder (see README.md) by a fixed rule, from local copies of
tracebase and of the REFIT excerpt:

    python tests/data/heldout_traces/extract.py /path/to/tracebase /path/to/refit-cleaned

`/path/to/tracebase` is a checkout of https://github.com/areinhardt/tracebase (folders `complete/`, `incomplete/`);
`/path/to/refit-cleaned` holds `House_<n>.csv` as in https://github.com/frictionlessdata/pilot-dm4t at commit
c83cb68bf704ba26f281d3502063fe55c9e96d6c, folder `datasets/refit-cleaned/` (the first 10,000 rows of each house of
the REFIT cleaned data set). Not run by the tests (they read the excerpts committed here, offline).

The rule was written down before any of these excerpts was replayed through a profile, and nothing was chosen by
hand: this script is the whole choice.

*Devices.* Per kind, in this order, every device that did not feed the tuning (tests/data/traces):
- tracebase: the folders in `FOLDERS`, device files in byte order of their names; a device is the (folder, plug id)
  pair (the same plug moved between appliances); files without a plug id (`Washingmachine_...`, `Kettle_...`) are
  left out, as they may be one of the tuned machines. Dryers: no held-out dryer is in `complete/`, so
  `incomplete/LaundryDrier` is read too.
- REFIT: houses in ascending order, the columns of that kind in the house's readme (`REFIT_COLUMNS`), at most one
  device per house and kind (the first column that qualifies); "Washer Dryer" and "Kettle/Toaster" are left out
  (not one kind of machine).
Per data set, the first `TAKE[kind]` devices that have a qualifying window are taken (3 of the programme machines,
which have the most rules and the widest spread between machines; 2 kettles and 2 fridges).

*Window* (power alone; the readings are held until the next row, as in tests/support/real_traces.py; a device's day
files in date order, the first qualifying window of the first day that has one; REFIT: its one file):
- washer, dishwasher, dryer: one programme = readings above 10 W, any spell of at most 10 W shorter than 30 minutes
  counting as part of it; it qualifies if it holds at least 60 s at 1 kW or more, lasts 20 minutes to 4 hours, and
  has 30 minutes at or below 10 W on both sides inside the file. Window: 5 minutes before its first reading above
  10 W to 20 minutes after its last.
- kettle: boils as the tests count them (above 1 kW, closer than 60 s merged, at least 10 s). Window: 5 minutes
  before the day's first boil to 60 minutes after it; while a boil starts before the window's end, the end moves to
  10 minutes after that boil.
- fridge: the first night's 01:00-04:00; either end, if it falls inside a compressor run (above 40 W, closer than
  120 s merged, as the tests count them), moves to 60 s after that run; it qualifies if at least one run of 60 s or more
  lies inside.
- every window: no two rows more than 120 s apart inside it, its first row within 120 s of its start and its last
  within 120 s of its end.

Each excerpt: the rows whose time falls in the window, as seconds from the window's start and the power in whole
watts (tracebase: the one-second average, first value column; REFIT: the appliance's column). Rows that do not
parse are skipped; nothing is resampled, interpolated or smoothed.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

# kind: (short name, profile)
KINDS = {"washer": "washing_machine", "dishwasher": "dishwasher", "dryer": "tumble_dryer", "kettle": "kettle",
         "fridge": "fridge_freezer"}
TAKE = {"washer": 3, "dishwasher": 3, "dryer": 3, "kettle": 2, "fridge": 2}
FOLDERS = {"washer": ["complete/Washingmachine"], "dishwasher": ["complete/Dishwasher"],
           "dryer": ["complete/LaundryDryer", "incomplete/LaundryDrier"], "kettle": ["complete/WaterKettle"],
           "fridge": ["complete/Refrigerator", "complete/Freezer"]}
# (folder, plug id) of the twelve tuned excerpts in tests/data/traces (plus the id-less "Refrigerator")
TUNED = {("Washingmachine", "7297E3"), ("Washingmachine", "D31FFD"), ("Washingmachine", "D3230E"),
         ("LaundryDryer", "D36122"), ("LaundryDryer", "B7E43D"), ("LaundryDrier", "B7E43D"),
         ("Dishwasher", "995BAC"), ("Dishwasher", "B7E6F4"), ("Dishwasher", "B81D04"),
         ("WaterKettle", "B80E47"), ("WaterKettle", "D33E1F"), ("Refrigerator", "B83B9E")}
# REFIT readme: house -> [(column, name)] of the five kinds
REFIT_COLUMNS = {
    1: [(1, "Fridge"), (2, "Chest Freezer"), (3, "Upright Freezer"), (4, "Tumble Dryer"), (5, "Washing Machine"),
        (6, "Dishwasher")],
    2: [(1, "Fridge-Freezer"), (2, "Washing Machine"), (3, "Dishwasher"), (8, "Kettle")],
    3: [(2, "Fridge-Freezer"), (3, "Freezer"), (4, "Tumble Dryer"), (5, "Dishwasher"), (6, "Washing Machine"),
        (9, "Kettle")],
    4: [(1, "Fridge"), (2, "Freezer"), (3, "Fridge-Freezer"), (4, "Washing Machine (1)"), (5, "Washing Machine (2)"),
        (9, "Kettle")],
    5: [(1, "Fridge-Freezer"), (2, "Tumble Dryer"), (3, "Washing Machine"), (4, "Dishwasher"), (8, "Kettle")],
    6: [(1, "Freezer (Utility Room)"), (2, "Washing Machine"), (3, "Dishwasher"), (7, "Kettle")],
    7: [(1, "Fridge"), (2, "Freezer (Garage)"), (3, "Freezer"), (4, "Tumble Dryer"), (5, "Washing Machine"),
        (6, "Dishwasher"), (9, "Kettle")],
    8: [(1, "Fridge"), (2, "Freezer"), (3, "Dryer"), (4, "Washing Machine"), (9, "Kettle")],
    9: [(1, "Fridge-Freezer"), (3, "Washing Machine"), (4, "Dishwasher"), (7, "Kettle")],
    10: [(2, "Freezer"), (3, "Chest Freezer (In Garage)"), (4, "Fridge-Freezer"), (5, "Washing Machine"),
         (6, "Dishwasher")],
    11: [(1, "Fridge"), (2, "Fridge-Freezer"), (3, "Washing Machine"), (4, "Dishwasher"), (7, "Kettle")],
    12: [(1, "Fridge-Freezer"), (4, "Kettle")],
    13: [(3, "Washing Machine"), (4, "Dishwasher"), (5, "Tumble Dryer"), (9, "Kettle")],
    15: [(1, "Fridge-Freezer"), (2, "Tumble Dryer"), (3, "Washing Machine"), (4, "Dishwasher"), (8, "Kettle")],
    16: [(1, "Fridge-Freezer (1)"), (2, "Fridge-Freezer (2)"), (5, "Washing Machine"), (6, "Dishwasher")],
    17: [(1, "Freezer (Garage)"), (2, "Fridge-Freezer"), (3, "Tumble Dryer (Garage)"), (4, "Washing Machine"),
         (8, "Kettle")],
    18: [(1, "Fridge(garage)"), (2, "Freezer(garage)"), (3, "Fridge-Freezer"), (5, "Washing Machine"),
         (6, "Dishwasher")],
    19: [(1, "Fridge & Freezer"), (2, "Washing Machine"), (5, "Kettle")],
    20: [(1, "Fridge"), (2, "Freezer"), (3, "Tumble Dryer"), (4, "Washing Machine"), (5, "Dishwasher"), (9, "Kettle")],
    21: [(1, "Fridge-Freezer"), (2, "Tumble Dryer"), (3, "Washing Machine"), (4, "Dishwasher")],
}


def refit_kind(name: str) -> str:
    n = name.lower()
    if "washing machine" in n:
        return "washer"
    if "dishwasher" in n:
        return "dishwasher"
    if "dryer" in n:
        return "dryer"
    if n == "kettle":
        return "kettle"
    return "fridge" if "fridge" in n or "freezer" in n else ""


Rows = list[tuple[datetime, int]]

ON_W, REST_S, HEAT_W, HEAT_S = 10, 1800, 1000, 60
MIN_PROG_S, MAX_PROG_S, BEFORE_S, AFTER_S = 1200, 4 * 3600, 300, 1200
RUNS = {"kettle": (1000, 60, 10), "fridge": (40, 120, 60)}  # as tests/support/real_traces.py
MAX_GAP_S = 120


def held(rows: Rows) -> list[int]:
    """Watts at 1 Hz from the first row, each row held until the next (as real_traces.load)."""
    t0 = rows[0][0]
    out: list[int] = []
    for (t, w), (t_next, _) in zip(rows, [*rows[1:], (rows[-1][0] + timedelta(seconds=1), 0)], strict=True):
        a, b = int((t - t0).total_seconds()), int((t_next - t0).total_seconds())
        out += [w] * max(0, b - max(a, len(out)))
    return out


def runs(w: list[int], above: int, pause: int) -> list[list[int]]:
    out: list[list[int]] = []
    for i, x in enumerate(w):
        if x > above:
            if out and i - out[-1][1] <= pause:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1])
    return out


def window(kind: str, rows: Rows) -> tuple[datetime, datetime] | None:
    """The first qualifying window of these rows (one day file), or None."""
    if not rows:
        return None
    t0 = rows[0][0]
    w = held(rows)

    def at(i: int) -> datetime:
        return t0 + timedelta(seconds=i)

    found: tuple[datetime, datetime] | None = None
    if kind in ("washer", "dishwasher", "dryer"):
        for a, b in runs(w, ON_W, REST_S):
            hot = sum(1 for x in w[a:b] if x >= HEAT_W)
            if hot >= HEAT_S and MIN_PROG_S <= b - a <= MAX_PROG_S and a >= REST_S and len(w) - b >= REST_S:
                found = at(a - BEFORE_S), at(b + AFTER_S)
                if _dense(rows, *found):
                    return found
        return None
    above, pause, shortest = RUNS[kind]
    rr = runs(w, above, pause)
    if kind == "kettle":
        boils = [r for r in rr if r[1] - r[0] >= shortest]
        for first in boils:
            a, end = first[0] - 300, first[0] + 3600
            for s, e in boils:
                if s < end:
                    end = max(end, e + 600)
            if a >= 0 and end <= len(w):
                found = at(a), at(end)
                if _dense(rows, *found):
                    return found
            return None  # only the day's first boil
        return None
    # fridge: the first night's 01:00-04:00
    night = datetime.combine(t0.date(), datetime.min.time()) + timedelta(hours=1)
    if night < t0:
        night += timedelta(days=1)
    a, b = int((night - t0).total_seconds()), int((night - t0).total_seconds()) + 3 * 3600
    if b > len(w):
        return None
    for s, e in rr:
        if s < a < e:
            a = e + 60
        if s < b < e:
            b = e + 60
    inside = [r for r in rr if a <= r[0] and r[1] <= b and r[1] - r[0] >= shortest]
    if inside and b <= len(w):
        found = at(a), at(b)
        if _dense(rows, *found):
            return found
    return None


def _dense(rows: Rows, t0: datetime, t1: datetime) -> bool:
    ts = [t for t, _ in rows if t0 <= t < t1]
    if not ts or (ts[0] - t0).total_seconds() > MAX_GAP_S or (t1 - ts[-1]).total_seconds() > MAX_GAP_S:
        return False
    return all((b - a).total_seconds() <= MAX_GAP_S for a, b in pairwise(ts))


def tracebase_rows(path: Path) -> Rows:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(";")]
        if len(parts) < 2:
            continue
        try:
            out.append((datetime.strptime(parts[0], "%d/%m/%Y %H:%M:%S"), round(float(parts[1]))))
        except ValueError:
            continue
    out.sort(key=lambda r: r[0])
    return out


def refit_rows(path: Path, column: int) -> Rows:
    out = []
    with path.open(newline="") as f:
        for rec in csv.reader(f):
            try:
                out.append((datetime.strptime(rec[0], "%Y-%m-%d %H:%M:%S"), round(float(rec[2 + column]))))
            except (ValueError, IndexError):
                continue
    out.sort(key=lambda r: r[0])
    return out


ID = re.compile(r"^(?:dev_|device_|_)([0-9A-F]{6})_")


def tracebase_candidates(root: Path, kind: str) -> Iterator[tuple[str, str, list[Path]]]:
    for folder in FOLDERS[kind]:
        files: dict[str, list[Path]] = {}
        for p in sorted((root / folder).glob("*.csv"), key=lambda p: p.name.encode()):
            m = ID.match(p.name)
            if m and (Path(folder).name, m.group(1)) not in TUNED:
                files.setdefault(m.group(1), []).append(p)
        for dev, paths in files.items():
            yield folder, dev, paths


def choose(tracebase: Path, refit: Path) -> list[tuple[str, str, str, Rows, datetime, datetime]]:
    """(excerpt name, profile, origin, rows, window start, window end) by the rule above."""
    out = []
    for kind, profile in KINDS.items():
        taken = 0
        for _folder, dev, paths in tracebase_candidates(tracebase, kind):
            if taken == TAKE[kind]:
                break
            for p in paths:  # day files in date order (names are <id>_<yyyy.mm.dd>...)
                rows = tracebase_rows(p)
                win = window(kind, rows)
                if win:
                    rel = p.relative_to(tracebase).as_posix()
                    out.append((f"{kind}-{dev}-{win[0]:%Y-%m-%d}", profile, f"tracebase {rel}", rows, *win))
                    taken += 1
                    break
        taken = 0
        for house, cols in sorted(REFIT_COLUMNS.items()):
            if taken == TAKE[kind]:
                break
            path = refit / f"House_{house}.csv"
            for col, name in cols:
                if refit_kind(name) != kind:
                    continue
                rows = refit_rows(path, col)
                win = window(kind, rows)
                if win:
                    out.append((f"{kind}-REFIT{house:02d}-{win[0]:%Y-%m-%d}", profile,
                                f"REFIT House_{house}.csv Appliance{col} ({name})", rows, *win))
                    taken += 1
                    break
    return out


def main(tracebase: Path, refit: Path) -> None:
    here = Path(__file__).resolve().parent
    for name, profile, origin, rows, t0, t1 in choose(tracebase, refit):
        lic = "ODbL 1.0" if origin.startswith("tracebase") else "CC BY 4.0"
        lines = [f"# {origin}, {t0:%Y-%m-%d %H:%M:%S} to {t1:%Y-%m-%d %H:%M:%S} ({lic}, see README.md)",
                 f"# profile {profile}", "# seconds from start, watts"]
        lines += [f"{int((t - t0).total_seconds())},{w}" for t, w in rows if t0 <= t < t1]
        (here / f"{name}.csv").write_text("\n".join(lines) + "\n")
        print(f"| {name} | {profile} | {origin.split(' ', 1)[1]}, {t0:%Y-%m-%d %H:%M:%S}-{t1:%H:%M:%S} "
              f"| {len(lines) - 3} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
