"""What happens to the config's `[tariff]` at each start, including after it was edited (docs/pricing.md).

Before, the `[tariff]` was applied only at the very first start (no pricing snapshot yet) and every later edit was
silently ignored. Now, at every start, after the pricing snapshot and the cloud's documents are restored:

- a cloud tariff with the same id, or one pricing the same appliances (both gateway-wide defaults, or sharing an
  appliance), **supersedes** it: the cloud is the billing authority; said at info, nothing changes;
- otherwise, no tariff of its id in use yet, or a **higher version** than the one in use: it is **applied** to the
  records priced from now on, stored in the ledger (document kind `config-tariff`) and said at info;
- the **same content** as the one in use: nothing to do;
- **different content without a higher version**: not applied — records name the tariff id and version that priced
  them, so one version must mean one content. The gateway keeps pricing with the version in use and logs one
  warning naming the file and `tariff.version` and what to do; `koto check` and `koto doctor` report it as a problem.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from metering.tariff import Tariff

from .config import GatewayConfig
from .errors import ConfigError

log = logging.getLogger("koto.tariff")

CONFIG_TARIFF_DOC = "config-tariff"
PRICING_CHECKPOINT = "pricing"  # the daemon's name for the pricing snapshot (gateway.daemon uses the same)

Action = Literal["apply", "same", "superseded", "refused"]


@dataclass(frozen=True)
class TariffPlan:
    """What the next start does with the config's tariff, and the sentence that says so."""

    action: Action
    message: str
    tariff: Tariff
    problem: ConfigError | None = None


def _overlaps(a: Tariff, b: Tariff) -> bool:
    if not a.appliances and not b.appliances:
        return True
    return bool(set(a.appliances) & set(b.appliances))


def plan_config_tariff(cfg_tariff: dict[str, Any], file: str, in_use: Sequence[Tariff],
                       from_cloud: Sequence[Tariff]) -> TariffPlan:
    """Decide (pure) what to do with the config's `[tariff]`, given the tariffs in use and those the cloud sent."""
    t = Tariff.from_dict(cfg_tariff, file=file)
    name = f"{file} [tariff] {t.id!r} version {t.version}"
    boss = next((c for c in from_cloud if c.id == t.id or _overlaps(c, t)), None)
    if boss is not None:
        return TariffPlan("superseded", f"{name} is not used: the cloud's tariff {boss.id!r} version {boss.version} "
                                        "prices the same appliances (tariffs from the cloud take precedence)", t)
    current = next((c for c in in_use if c.id == t.id), None)
    if current is None:
        return TariffPlan("apply", f"{name} applies to the records priced from now on", t)
    if current == t:
        return TariffPlan("same", f"{name} is the tariff in use", t)
    if t.version > current.version:
        return TariffPlan("apply", f"{name} applies to the records priced from now on (it replaces version "
                                   f"{current.version})", t)
    problem = ConfigError(file, "tariff.version",
                          f"[tariff] {t.id!r} was edited but its version {t.version} is not above version "
                          f"{current.version} in use, so the edit is not applied and records keep that version's "
                          f"prices; set version = {current.version + 1} and restart to apply it from then on")
    return TariffPlan("refused", str(problem), t, problem)


def _state(ledger: Any, tz: Any) -> tuple[list[Tariff], list[Tariff]]:
    """The tariffs in use after the pricing snapshot and the cloud's documents are restored, and the cloud's."""
    from metering.pricing import Pricing

    from .downlink import DOC_TARIFF, restore_from_ledger

    pricing = Pricing(tz=tz)
    snap = ledger.checkpoint(PRICING_CHECKPOINT)
    if snap:
        pricing.restore(snap)
    restore_from_ledger(ledger, pricing)
    cloud = [Tariff.from_dict(d.body, file=f"ledger tariff {d.id}") for d in ledger.docs(DOC_TARIFF)]
    return list(pricing.tariffs), cloud


def apply_config_tariff(cfg: GatewayConfig, ledger: Any, pricing: Any) -> TariffPlan | None:
    """At start, after the snapshot and the cloud's documents are restored into `pricing`: carry out the plan.

    An applied config tariff is stored in the ledger (`config-tariff` document) so what priced the records can be
    traced; a refused edit is one warning, and the gateway meters on with the tariff in use."""
    if not cfg.tariff:
        return None
    from .downlink import DOC_TARIFF

    cloud = [Tariff.from_dict(d.body, file=f"ledger tariff {d.id}") for d in ledger.docs(DOC_TARIFF)]
    plan = plan_config_tariff(cfg.tariff, cfg.file, pricing.tariffs, cloud)
    if plan.action == "apply":
        pricing.apply_tariff(plan.tariff)
        ledger.put_doc(CONFIG_TARIFF_DOC, plan.tariff.id, plan.tariff.version, plan.tariff.to_dict())
        log.info("tariff: %s", plan.message)
    elif plan.action == "refused":
        log.warning("tariff: %s", plan.message)
    elif plan.action == "superseded":
        log.info("tariff: %s", plan.message)
    return plan


def check_against_ledger(cfg: GatewayConfig) -> tuple[ConfigError | None, str]:
    """For `koto check` and `koto doctor`: what the next start will do with the `[tariff]`, read-only. Without a
    ledger (never started) or one this user cannot read, the plan is the first start's: apply."""
    from metering.errors import LedgerError
    from metering.ledger import Ledger

    from .state import StateDir

    assert cfg.tariff is not None
    path = StateDir(cfg.state_dir).ledger
    try:
        if not path.exists():
            return None, f"[tariff] {cfg.tariff.get('id')!r} applies at the first start"
        with Ledger.open(path, gateway_id=cfg.id, key=None) as ledger:
            in_use, cloud = _state(ledger, cfg.tz)
    except (OSError, LedgerError) as e:
        return None, f"[tariff]: cannot read the ledger to see whether an edit applies ({e})"
    plan = plan_config_tariff(cfg.tariff, cfg.file, in_use, cloud)
    return plan.problem, "" if plan.problem else plan.message
