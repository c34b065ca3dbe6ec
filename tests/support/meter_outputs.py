"""A meter's results as plain data (strings, integers, lists, objects), to compare two meters or a meter against
results recorded earlier: every event field, every usage record field, and each lifecycle note as its ledger draft."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering.meter import FeedResult
from metering.records import UsageRecord


def plain(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if v is None or type(v) in (int, str):
        return v
    return str(v)


def encode_result(res: FeedResult) -> dict[str, Any]:
    events = [[e.kind, e.appliance, e.function, e.power_mw, repr(e.t_wall), e.message, plain(e.decision)]
              for e in res.events]
    items = [{"type": "UsageRecord", **{f.name: plain(getattr(i, f.name)) for f in dataclasses.fields(i)}}
             if isinstance(i, UsageRecord) else
             {"type": "LifecycleNote", **plain(dataclasses.asdict(i.draft("subject", res.appliance)))}
             for i in res.items]
    return {"events": events, "items": items}
