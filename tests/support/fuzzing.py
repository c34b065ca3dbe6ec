"""One knob for every fuzz test: how many cases each one runs.

`make test` runs each fuzz test with a few thousand cases (the default below); `make fuzz` sets
``KOTO_FUZZ_EXAMPLES=100000`` and runs only the fuzz tests (files named ``test_fuzz_*.py``). A fuzz test takes its
settings from :func:`fuzz_settings` so the two runs differ in size only, never in what they check. Any crash a fuzz
run finds becomes a plain regression test beside it (an ``@example`` or a byte literal).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 2000


def fuzz_examples(default: int = DEFAULT_EXAMPLES) -> int:
    """Cases per fuzz test: ``$KOTO_FUZZ_EXAMPLES`` when set (``make fuzz``), else ``default``."""
    raw = os.environ.get("KOTO_FUZZ_EXAMPLES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def fuzz_settings(default: int = DEFAULT_EXAMPLES) -> settings:
    """Hypothesis settings for a fuzz test: no deadline (a loaded 2-core machine), no shrinking time limit."""
    return settings(
        max_examples=fuzz_examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        database=None,
    )
