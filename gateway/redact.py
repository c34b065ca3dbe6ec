"""Redaction for the support bundle: a config file's secrets out, everything else left readable.

Two rules, both applied: **by key name** (a key whose name says secret: `key`, `bindkey`, `password`, `token`,
`secret`, `psk`, `private...`, `credential`, `api_key`, `auth...`; its value becomes `"<redacted>"`, keeping the
file's layout for the person reading it), and **by value** (any PEM block, `-----BEGIN ...-----` to `-----END
...-----`, wherever it is, and any 32+ digit hex string, the shape of a BLE bindkey). A text redaction could miss an
odd TOML form (a secret in an array, a dotted key), so `Secrets` also lists the values themselves, from the parsed
document and the key files the config names, and `scrub` replaces every occurrence of any of them in every file of
the bundle; the bundle test greps the whole archive for each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
SECRET_NAME = re.compile(r"(^|[_.-])(key|bindkey|passwords?|passwd|pass|tokens?|secrets?|psk|credentials?|api_?key)$|"
                         r"^(private|auth)", re.IGNORECASE)
PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----", re.DOTALL)
HEX_SECRET = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_VALUE = r'("""(?:.|\n)*?"""|\'\'\'(?:.|\n)*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|[^,}\]\n#]+)'
_ASSIGN = re.compile(r'(?P<key>[A-Za-z0-9_-]+|"[^"\n]*")(?P<eq>\s*=\s*)(?P<value>' + _VALUE + ")")
MIN_SECRET_LEN = 4  # shorter values ("1", "on") are not scrubbed from other files: they would blank out the text


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name.strip('"')))


def redact_toml_text(text: str) -> str:
    """The config text with secret values replaced, layout and comments kept."""
    text = PEM.sub(REDACTED, text)

    def assign(m: re.Match[str]) -> str:
        if is_secret_name(m.group("key")):
            return f'{m.group("key")}{m.group("eq")}"{REDACTED}"'
        return m.group(0)

    text = _ASSIGN.sub(assign, text)
    return HEX_SECRET.sub(REDACTED, text)


def _walk(value: Any, secret: bool) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, secret or is_secret_name(str(k)))
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, secret)
    elif isinstance(value, str) and (secret or PEM.search(value) or HEX_SECRET.search(value)):
        yield value


class Secrets:
    """Every secret value known: from the parsed config (by key name and by value) and key files it names."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: set[str] = {v for v in values if len(v) >= MIN_SECRET_LEN}

    @classmethod
    def from_config(cls, data: dict[str, Any], key_files: Iterable[Path] = ()) -> Secrets:
        values = set(_walk(data, False))
        for f in key_files:
            try:
                values.update(m.group(0) for m in PEM.finditer(f.read_text(errors="replace")))
            except OSError:
                continue
        # a PEM's base64 lines are secrets on their own too (a log could quote one line of it)
        for v in list(values):
            for block in PEM.findall(v):
                values.update(line for line in block.splitlines()[1:-1] if len(line) >= 16)
        return cls(values)

    def scrub(self, text: str) -> str:
        text = PEM.sub(REDACTED, text)
        for v in sorted(self.values, key=len, reverse=True):
            if v in text:
                text = text.replace(v, REDACTED)
        return text

    def found_in(self, text: str) -> list[str]:
        return [v for v in self.values if v in text]
