"""Validate payloads against cloud/schemas (JSON Schema draft 2020-12), resolving their cross-file $refs offline."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "cloud" / "schemas"


@cache
def registry() -> Registry:
    resources = []
    for p in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(p.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    doc = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc, registry=registry())


def errors(name: str, payload: Any) -> list[str]:
    """Plain messages for every violation ([] = valid). `payload` may be bytes (parsed as JSON) or a value."""
    value = json.loads(payload) if isinstance(payload, bytes | str) else payload
    return [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in validator(name).iter_errors(value)]
