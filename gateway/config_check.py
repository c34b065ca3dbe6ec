"""`koto check --config FILE`: everything a config names, checked in one pass without starting anything.

`gateway.config` reads the file and collects every problem of its keys (shape, ranges, drivers' own keys, two
sources on one piece of hardware, the `[tariff]`). This module adds what the file *names*: the profiles, and the
`[cloud]` TLS and operator key files (present, readable, the right kind of PEM, the client certificate matching its
key). Each problem is a `FieldError` naming the config file and the key that names the faulty thing.

Whether a `[tariff]` edited after the first start will be applied needs the ledger, so it is checked here too when
the state folder can be read (`gateway.config_tariff`); see docs/pricing.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koto.errors import FieldError, explain_os_error

from .config import GatewayConfig, parse_config_all, read_toml
from .config_household import Household, profile_key
from .errors import ConfigError


@dataclass
class CheckReport:
    """Every problem found (each names file and key), notes worth saying (no problem), and the config as read."""

    file: str
    problems: list[FieldError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: GatewayConfig | None = None
    additions: list[str] = field(default_factory=list)  # what household.toml adds, one line each

    @property
    def ok(self) -> bool:
        return not self.problems


ETC = Path("/etc/koto")


def check_config(path: str | Path, *, with_state: bool = True, bootfs: bool = False) -> CheckReport:
    """Check the file at `path` and everything it names. `with_state`: also say what happens to its `[tariff]`
    at the next start (read-only look at the ledger, when there is one and it can be read). `bootfs`: the config
    sits on a card's boot partition (or in a laptop folder to be copied there), so every file it names under
    /etc/koto is read from beside it, as the first boot will import it (gateway/firstboot.py); one not there is
    checked where it is named, and is missing on the card too."""
    p = Path(path)
    report = CheckReport(str(p))
    try:
        data = read_toml(p)
    except ConfigError as e:
        report.problems.append(e)
        return report
    if bootfs:
        data = _beside(data, p.resolve().parent)
    cfg, problems = parse_config_all(data, file=str(p), base=p.resolve().parent)
    from .config_household import merge_all

    hh = merge_all(cfg, problems)  # STATE_DIR/household.toml: its problems name that file
    cfg = hh.config
    report.config = cfg
    report.additions = [a.line for a in hh.additions]
    report.notes.extend(hh.notes)
    report.problems.extend(problems.items)
    report.problems.extend(_profile_problems(cfg, hh))
    report.problems.extend(_cloud_file_problems(cfg))
    if bootfs:
        from .boot_hardware import preview

        report.notes.extend(preview(p.resolve().parent, cfg))
    if with_state and cfg.tariff is not None and not any(e.key.startswith("tariff") for e in report.problems):
        from .config_tariff import check_against_ledger

        problem, note = check_against_ledger(cfg)
        if problem is not None:
            report.problems.append(problem)
        if note:
            report.notes.append(note)
    return report


def _profile_problems(cfg: GatewayConfig, hh: Household | None = None) -> list[FieldError]:
    from metering.profile import builtin_profile, load_profile

    out: list[FieldError] = []
    for app in cfg.appliances:
        file, key = profile_key(hh, app.id) or (cfg.file, f"appliance.{app.id}.profile")
        try:
            if app.profile.endswith(".toml") or "/" in app.profile:
                load_profile(app.profile)
            else:
                builtin_profile(app.profile)
        except FieldError as e:  # the profile's own problem, said at the key that names it
            out.append(ConfigError(file, key, str(e)))
        except Exception as e:  # an unreadable file or package: still one line, and the other checks go on
            out.append(ConfigError(file, key, f"cannot load it: {type(e).__name__}: {e}"))
    return out


def _read(cfg: GatewayConfig, key: str, path: Path) -> bytes | FieldError:
    try:
        return path.read_bytes()
    except OSError as e:
        return ConfigError(cfg.file, key, explain_os_error(e))


def _beside(data: Any, folder: Path) -> Any:
    """`data` with each string naming a file directly under /etc/koto replaced by that name in `folder`, where the
    file is there (what the first boot's import will put under /etc/koto)."""
    if isinstance(data, dict):
        return {k: _beside(v, folder) for k, v in data.items()}
    if isinstance(data, list):
        return [_beside(v, folder) for v in data]
    if isinstance(data, str) and data.startswith(f"{ETC}/") and "/" not in data[len(str(ETC)) + 1:]:
        there = folder / data[len(str(ETC)) + 1:]
        return str(there) if there.is_file() else data
    return data


def _cloud_file_problems(cfg: GatewayConfig) -> list[FieldError]:
    """The CA, client certificate and key, and operator keys: present, readable, the right PEM, cert matches key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cloud = cfg.cloud
    if cloud is None:
        return []
    out: list[FieldError] = []
    cert_pub = key_pub = None
    if cloud.ca is not None:
        data = _read(cfg, "cloud.ca", cloud.ca)
        if isinstance(data, FieldError):
            out.append(data)
        else:
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                out.append(ConfigError(cfg.file, "cloud.ca", f"{cloud.ca}: not a PEM certificate (the CA that signed "
                                                             "the broker's certificate)"))
    if cloud.cert is not None:
        data = _read(cfg, "cloud.cert", cloud.cert)
        if isinstance(data, FieldError):
            out.append(data)
        else:
            try:
                cert_pub = x509.load_pem_x509_certificate(data).public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            except ValueError:
                out.append(ConfigError(cfg.file, "cloud.cert", f"{cloud.cert}: not a PEM certificate"))
    if cloud.key is not None:
        data = _read(cfg, "cloud.key", cloud.key)
        if isinstance(data, FieldError):
            out.append(data)
        else:
            try:
                key_pub = serialization.load_pem_private_key(data, password=None).public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            except (ValueError, TypeError):
                out.append(ConfigError(cfg.file, "cloud.key", f"{cloud.key}: not an unencrypted PEM private key"))
    if cert_pub is not None and key_pub is not None and cert_pub != key_pub:
        out.append(ConfigError(cfg.file, "cloud.key", f"{cloud.key} is not the key of the certificate {cloud.cert}; "
                                                      "give the key the certificate was issued for"))
    out.extend(_operator_key_problems(cfg))
    return out


def _operator_key_problems(cfg: GatewayConfig) -> list[FieldError]:
    from koto.signing import KeyError_, load_public_key

    assert cfg.cloud is not None
    out: list[FieldError] = []
    for i, path in enumerate(cfg.cloud.operator_keys):
        key = f"cloud.operator_keys[{i}]"
        data = _read(cfg, key, path)
        if isinstance(data, FieldError):
            out.append(data)
            continue
        try:
            load_public_key(data)
        except KeyError_ as e:
            out.append(ConfigError(cfg.file, key, f"{path}: {e}"))
    return out
