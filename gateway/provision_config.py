"""The first `koto.toml` of a gateway, written by `koto provision` from flags or from an installer's answers.

It holds what provisioning knows (the id, where the state is, the time zone, the broker, the CA, the client
certificate to come and the pinned operator key) and no appliance: those come from `koto discover`'s blocks, pasted
in afterwards. The text is validated by the one config parser (`gateway.config.parse_config`) before anything is
written, so a bad flag is the same one line naming the key that `koto check` would print, and the file is written
atomically with mode 0600 (it names key files; a later version may hold a password): a full disk or a power cut
leaves no file or the whole file, never half of one.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from koto.files import write_atomic

from .config import GatewayConfig, parse_config


@dataclass(frozen=True, slots=True)
class NewConfig:
    gateway_id: str
    state_dir: Path
    timezone: str = "UTC"
    broker: str | None = None  # None: meter locally only, no [cloud] table
    ca: Path | None = None  # None: the system's CAs check the broker's certificate
    cert: Path | None = None  # where the operator's CA's certificate for the CSR goes (mqtts only)
    key: Path | None = None  # the device key, which the CSR is for
    operator_key: Path | None = None  # the pinned command-signing key


def _q(value: str | Path) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string for everything a path or URL holds


def render(new: NewConfig) -> str:
    """The file's text: the keys set, each with the comment an installer needs to change it later."""
    lines = [
        "# Written by `koto provision`. Add appliances from `koto discover`, then check with `koto check`.",
        "",
        "[gateway]",
        f"id = {_q(new.gateway_id)}  # also the MQTT client id and the CN of the gateway's certificate",
        f"state_dir = {_q(new.state_dir)}  # ledger.db and keys/",
        f"timezone = {_q(new.timezone)}  # time-of-use tariff windows are in this local time",
    ]
    if new.broker is not None:
        lines += ["", "[cloud]", f"broker = {_q(new.broker)}"]
        if new.ca is not None:
            lines.append(f"ca = {_q(new.ca)}  # the CA that signed the broker's certificate")
        if new.cert is not None and new.key is not None:
            lines += [f"cert = {_q(new.cert)}  # the operator's CA signs keys/device.csr.pem into this file",
                      f"key = {_q(new.key)}  # the device key the request is for"]
        if new.operator_key is not None:
            lines.append(f"operator_keys = [{_q(new.operator_key)}]  # who may send tariffs and entitlements")
    elif new.operator_key is not None:
        lines += ["", "# No [cloud]: this gateway meters locally. The operator's key is pinned for when it syncs:",
                  f"# operator_keys = [{_q(new.operator_key)}]"]
    return "\n".join(lines) + "\n"


def validate(text: str, path: Path) -> GatewayConfig:
    """Parse `text` as the file at `path` would be: the same errors, naming `path` and the key."""
    return parse_config(tomllib.loads(text), file=str(path), base=path.parent)


def write_config(path: Path, text: str) -> None:
    """Write the config all or nothing, mode 0600 from its first byte, making its folder if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=0o600)
