"""Where things are: the repository, for tests that read what operators deploy (configs, units, schemas), and
scratch folders that last as long as the pytest process."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def process_folder(prefix: str) -> str:
    """A new temporary folder for this process (the controller or one xdist worker), removed when it exits: for
    what a program the tests start would otherwise leave in a shared place (/run/koto, /tmp)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return folder
