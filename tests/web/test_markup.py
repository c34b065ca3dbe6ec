"""gateway.web.markup.escape is html.escape without the `html` package (docs/performance.md): same output for any
text, and the page's modules do not import `html`."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.web.markup import escape

REPO = Path(__file__).resolve().parents[2]


MARKUP = st.lists(st.sampled_from(["&", "<", ">", '"', "'", "a", ";", "&amp;", "&#x27;", "é", "\u00a0", "\U0001f600"]))


@given(MARKUP.map("".join) | st.text())
def test_escape_is_html_escape(s: str) -> None:
    assert escape(s) == html.escape(s)
    assert escape(s, quote=False) == html.escape(s, quote=False)


def test_the_reference_cases() -> None:
    assert escape("<a href=\"x\">Tom & Jerry's</a>") == "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#x27;s&lt;/a&gt;"
    assert escape("&amp;", quote=False) == "&amp;amp;"
    assert escape("\"'", quote=False) == "\"'"


def test_the_page_does_not_import_html() -> None:
    code = "import json, sys; import gateway.web.app; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "gateway.web.render" in loaded
    assert "html" not in loaded and "html.entities" not in loaded
