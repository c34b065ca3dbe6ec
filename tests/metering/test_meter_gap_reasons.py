"""One list of gap reasons: `GapReason` in the code, and exactly the same list in docs/contract.md, docs/asyncapi.yaml
and cloud/schemas/event-usage.json; and every reason in the list is one the meter can emit."""

from __future__ import annotations

import json
import re

from metering.records import GapReason
from tests.support.paths import REPO

REASONS = [r.value for r in GapReason]


def test_the_contract_lists_exactly_the_gap_reasons_of_the_code() -> None:
    text = (REPO / "docs" / "contract.md").read_text()
    section = text.split("### Gap records", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert rows == REASONS


def test_the_asyncapi_document_lists_exactly_the_gap_reasons_of_the_code() -> None:
    text = (REPO / "docs" / "asyncapi.yaml").read_text()  # as text: no YAML parser among the dependencies
    found = re.search(r"carries a reason, one of:\s+([a-z_,\s]+?)\s+\(", text)
    assert found is not None
    assert [r.strip() for r in found.group(1).split(",")] == REASONS


def test_the_usage_schema_allows_exactly_the_gap_reasons_of_the_code() -> None:
    schema = json.loads((REPO / "cloud" / "schemas" / "event-usage.json").read_text())
    assert schema["properties"]["data"]["properties"]["reason"]["enum"] == REASONS


def test_every_gap_reason_is_one_the_meter_emits() -> None:
    code = "".join(p.read_text() for p in sorted((REPO / "metering" / "meter").glob("*.py")))
    assert [r.value for r in GapReason if f"GapReason.{r.name}" in code] == REASONS
