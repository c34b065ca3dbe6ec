"""`escape`: the standard library's `html.escape`, without importing the `html` package.

`import html` loads `html.entities` (its tables of 2,231 named character references, for `html.unescape`), which
the page never uses: about 0.5 MiB of the daemon's RSS (docs/performance.md). The five replacements below are
`html.escape`'s own, in its order; tests/web/test_markup.py checks them against it.
"""

from __future__ import annotations


def escape(s: str, quote: bool = True) -> str:
    """`&`, `<` and `>` as character references, and with `quote` also `"` and `'`: text safe in an element's
    content and in a quoted attribute value, exactly as `html.escape(s, quote)` returns it."""
    s = s.replace("&", "&amp;")  # first, or it would escape the references made below
    s = s.replace("<", "&lt;")
    s = s.replace(">", "&gt;")
    if quote:
        s = s.replace('"', "&quot;")
        s = s.replace("'", "&#x27;")
    return s
