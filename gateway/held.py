"""What a stop leaves unstored when the ledger cannot take it (a full SD card, the file deleted under us), said in
one error line a person can act on: how many records, and how much energy per appliance.

The daemon keeps records it could not commit in memory, in order, and retries (`Gateway._keep`). A stop ends that:
whatever is still held is gone from this ledger. It used to go without a word (issue 10). Now the journal says how
many records and how many mWh per appliance, and what happens to that energy:

- an appliance metered by a cumulative register (Modbus meters, a BTHome plug's energy counter): nothing is lost for
  billing. The meter's committed checkpoint still holds the register value of the last stored record, so the first
  reading after the next start closes the hole with a gap record carrying the register's difference;
- an S0 pulse input or an instantaneous power source has no register to ask: that energy is lost (the pulses
  counted since the last committed checkpoint, or the power integrated since), and the line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from metering.records import PARTITION_KINDS, USAGE_TYPE, Draft

log = logging.getLogger("koto.gateway")


@dataclass
class Held:
    """Records not stored, and the energy their partition records (function, interim, gap) carry per appliance.
    Cycle records summarise partition records, so their energy is not counted twice."""

    records: int = 0
    energy_mwh: dict[str, int] = field(default_factory=dict)


def summarize(drafts: Iterable[Draft]) -> Held:
    held = Held()
    for d in drafts:
        held.records += 1
        if d.type == USAGE_TYPE and d.data.get("kind") in PARTITION_KINDS:
            app = str(d.data.get("appliance", "?"))
            held.energy_mwh[app] = held.energy_mwh.get(app, 0) + int(d.data.get("energy_mwh", 0))
    return held


def report_unstored(drafts: list[Draft], energy_kinds: Mapping[str, str]) -> Held | None:
    """Log, at error level and in one line, what a stop leaves unstored; None when nothing is."""
    if not drafts:
        return None
    held = summarize(drafts)
    per_app = []
    for app, mwh in sorted(held.energy_mwh.items()):
        fate = ("reconciled from its register at the next start" if energy_kinds.get(app) == "register"
                else "lost: its meter has no register to reconcile from")
        per_app.append(f"{app} {mwh} mWh ({fate})")
    energy = "; ".join(per_app) if per_app else "no metered energy among them"
    log.error("ledger: stopping with %d records the ledger could not store (see the error before: a full disk, a "
              "lost or locked ledger file); they are not in the ledger: %s", held.records, energy)
    return held
