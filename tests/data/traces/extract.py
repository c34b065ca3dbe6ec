"""Cut the excerpts in this folder out of a local copy of the tracebase data set (see README.md).

    python tests/data/traces/extract.py /path/to/tracebase

Not run by the tests (they read the excerpts committed here, offline). Each excerpt is one window of one device's
day file from tracebase's "complete" folder: the rows whose time falls in the window, as seconds from the window's
start and the one-second average power in whole watts (tracebase's first value column; the eight-second average is
dropped). Rows that do not parse are skipped; nothing else is changed (no resampling, no interpolation).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

# (excerpt name, profile, tracebase file, window start, window end) — local time of the recording, as in the file
EXCERPTS = [
    ("washer-7297E3-2012-01-11", "washing_machine", "complete/Washingmachine/dev_7297E3_2012.01.11.csv",
     "18:25", "19:58"),
    ("washer-D31FFD-2012-06-19", "washing_machine", "complete/Washingmachine/dev_D31FFD_2012.06.19.csv",
     "13:35", "15:30"),
    ("washer-D3230E-2011-12-18", "washing_machine", "complete/Washingmachine/dev_D3230E_2011.12.18.csv",
     "13:15", "15:45"),
    ("dryer-D36122-2011-12-17", "tumble_dryer", "complete/LaundryDryer/_D36122_2011.12.17.csv",
     "10:45", "12:40"),
    ("dryer-B7E43D-2012-01-17", "tumble_dryer", "complete/LaundryDryer/dev_B7E43D_2012.01.17.csv",
     "22:25", "23:59"),
    ("dishwasher-995BAC-2012-06-15", "dishwasher", "complete/Dishwasher/dev_995BAC_2012.06.15.csv",
     "10:20", "12:20"),
    ("dishwasher-B7E6F4-2012-02-07", "dishwasher", "complete/Dishwasher/dev_B7E6F4_2012.02.07.csv",
     "08:55", "10:45"),
    ("dishwasher-B81D04-2012-06-10", "dishwasher", "complete/Dishwasher/dev_B81D04_2012.06.10.csv",
     "17:15", "19:45"),
    ("kettle-B80E47-2012-01-08", "kettle", "complete/WaterKettle/dev_B80E47_2012.01.08.csv", "10:40", "11:30"),
    ("kettle-D33E1F-2012-06-10", "kettle", "complete/WaterKettle/dev_D33E1F_2012.06.10.csv", "19:10", "20:40"),
    ("fridge-Refrigerator-2011-12-30", "fridge_freezer", "complete/Refrigerator/Refrigerator_2011.12.30.csv",
     "01:00", "04:00"),
    ("fridge-B83B9E-2012-02-01", "fridge_freezer", "complete/Refrigerator/dev_B83B9E_2012.02.01.csv",
     "01:00", "03:00"),
]


def rows(path: Path) -> list[tuple[datetime, int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(";")]
        if len(parts) < 2:
            continue
        try:
            out.append((datetime.strptime(parts[0], "%d/%m/%Y %H:%M:%S"), round(float(parts[1]))))
        except ValueError:
            continue
    return out


def main(root: Path) -> None:
    here = Path(__file__).resolve().parent
    for name, profile, rel, start, end in EXCERPTS:
        data = rows(root / rel)
        day = data[0][0].date()
        t0 = datetime.combine(day, datetime.strptime(start, "%H:%M").time())
        t1 = datetime.combine(day, datetime.strptime(end, "%H:%M").time())
        lines = [f"# tracebase {rel}, {t0:%Y-%m-%d %H:%M:%S} to {t1:%H:%M:%S} (ODbL 1.0, see README.md)",
                 f"# profile {profile}", "# seconds from start, watts (one-second average)"]
        lines += [f"{int((t - t0).total_seconds())},{w}" for t, w in data if t0 <= t < t1]
        (here / f"{name}.csv").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(lines) - 3} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
