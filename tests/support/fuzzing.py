"""One knob for every fuzz test: how many cases each one runs.

`make test` runs each fuzz test with 100 to 2,000 cases (the default below, or the test's own smaller
figure); `make fuzz` sets ``KOTO_FUZZ_EXAMPLES=100000`` and runs only the fuzz tests (files named
``test_fuzz_*.py``). A fuzz test takes its settings from :func:`fuzz_settings` so the two runs differ in size only,
never in what they check. Any crash a fuzz run finds becomes a plain regression test beside it (an ``@example`` or
a byte literal).
"""

from __future__ import annotations

import os
from typing import Any

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


# -- walking a parsed document (TOML table or JSON value) to mutate it ------------------------------------------


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a document (dict keys and list indexes), the root excluded: the places a mutation can hit."""
    out: list[tuple[Any, ...]] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += paths(v, (*prefix, k))
    return out


def deep_copy(obj: Any) -> Any:
    """A copy of a document's dicts and lists (the leaves are immutable), cheaper than copy.deepcopy per case."""
    if isinstance(obj, dict):
        return {k: deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [deep_copy(v) for v in obj]
    return obj


def get_at(obj: Any, path: tuple[Any, ...]) -> Any:
    """The value at `path` (as `paths` gives it)."""
    for k in path:
        obj = obj[k]
    return obj
