"""Run `koto` as a user who does not own the state folder: the support call "it says permission denied".

As root (this machine's CI), the child imports everything first and then drops to `nobody` (the interpreter lives
under /root, which `nobody` may not read, so it cannot be exec'd as `nobody`). As an ordinary user the files are
made unreadable with chmod instead, which the caller does; the child then runs unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .paths import REPO
from .slow import scaled

AS_ROOT = os.geteuid() == 0
PRELOAD = ["gateway.entry", "gateway.cli", "gateway.logs", "gateway.daemon", "gateway.runner", "gateway.config",
           "gateway.state", "gateway.usage_report", "metering.ledger", "metering.profile", "koto.signing", "koto.files",
           "zoneinfo", "sqlite3", "multiprocessing", "json", "asyncio", "tomllib", "pwd", "drivers.base",
           "drivers.gpio", "drivers.modbus", "logging.handlers",
           # `koto`'s commands are imported when named (gateway/cli.py), after the drop, where nobody may read them
           *(f"gateway.cli_{m}" for m in ("check", "discover", "doctor", "firstboot", "logs", "provision", "status",
                                         "support", "usage", "profile", "learn")), "gateway.usage_detail"]
CHILD = """
import importlib, os, sys
for m in {preload!r}:
    importlib.import_module(m)
if os.geteuid() == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
from gateway.entry import main  # the console script (`koto run` without click)
sys.exit(main(sys.argv[1:]))
"""


def koto_as_other_user(*args: str | Path, preload: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`preload`: more modules to import before dropping to `nobody` (those the command imports lazily)."""
    child = CHILD.format(preload=PRELOAD + list(preload))
    return subprocess.run([sys.executable, "-c", child, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=scaled(60))
