"""`koto ...` in a child process, with the misbehaving test drivers of `bad_drivers` registered:

    python -m tests.support.koto_child -v run --config FILE

Everything else is the real command: config loading, the daemon, the ledger, signals and exit codes.
"""

from __future__ import annotations

import sys

from drivers.base import REGISTRY
from gateway.entry import main  # the console script: `koto run` without click, the rest through gateway.cli

REGISTRY.setdefault("flaky", "tests.support.bad_drivers:FlakySource")

if __name__ == "__main__":
    sys.exit(main())
