"""The meter's checkpoint: its state values through the generic codec, and the reading of older checkpoints.

Version 4 is `encode(Checkpoint(...))`: the meter's `MeterState` beside the detector's, the cycle tracker's and the
register's own states. Version 3 lacked whether a power is only a bound (`Cursor.bounded`, `Deferred.bound`: an
S0 source's power between pulses, a bare counter's tick); it is read as measured, as version 3 treated it. Version 2
lacked the decisions deferred to the next reading and the register delta waiting for late steps (issue 9); it is
read with none of either. Version 1 (the hand-written format before the state became values) is rewritten into
version 2 data, then 3 and 4, so there is one decoder. A checkpoint of another version, or of another energy kind,
is ignored and the meter starts fresh, as before (the first authority reading becomes the baseline); a checkpoint of
a known version that does not decode is an error (`koto.errors.FieldError`), never a half-restored meter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..detect import ENDING, NO_TIME, CycleState, DetectorState
from ..energy import AuthorityState
from .codec import decode, encode
from .state import MeterState

VERSION = 4


@dataclass(slots=True)
class Checkpoint:
    v: int
    appliance: str
    kind: str
    source: str
    meter: MeterState
    detector: DetectorState
    cycle: CycleState
    authority: AuthorityState


def dump(cp: Checkpoint) -> dict[str, Any]:
    data: dict[str, Any] = encode(cp)
    return data


def load(data: dict[str, Any], *, kind: str, origin: str) -> Checkpoint | None:
    """The checkpoint in `data`, or None when it is of another version or energy kind (start fresh)."""
    v = data.get("v")
    if data.get("kind") != kind or v not in (1, 2, 3, VERSION):
        return None
    if v == 1:
        data = upgrade_v1(data)
    if data.get("v") == 2:
        data = upgrade_v2(data)
    if data.get("v") == 3:
        data = upgrade_v3(data)
    det = data.get("detector")
    if isinstance(det, dict) and "seen" not in det:  # written before profiles had `only_after`
        data = {**data, "detector": {**det, "seen": ""}}
    cyc = data.get("cycle")
    if isinstance(cyc, dict) and "low_since" not in cyc:  # written before profiles had `left_on_below_w`
        cyc = {**cyc, "low_since": NO_TIME}
        data = {**data, "cycle": cyc}
    if isinstance(cyc, dict) and "fall" not in cyc:  # written before a use ended where its power fell: the fall is
        data = {**data, "cycle": {**cyc, "fall": _fall(cyc)}}  # where the low spell began; the meter has no tail
    meter = data.get("meter")
    if isinstance(meter, dict) and "tail" not in meter:
        seg = meter.get("seg")
        meter = {**meter, "fall": "", "tail": []}
        if isinstance(seg, dict):
            meter["seg"] = {**seg, "fall": ""}
        data = {**data, "meter": meter}
    auth = data.get("authority")
    if isinstance(auth, dict) and "held" not in auth:  # written before a register's dip was held (metering.energy)
        data = {**data, "authority": {**auth, "held": ""}}  # the codec stores None as ""
    return decode(Checkpoint, data, origin=origin)


def _fall(cyc: dict[str, Any]) -> Any:
    """Where the running use's power fell, from a tracker state of before `fall` was kept (its low spell's start;
    the meter then holds no tail, so that use ends where its dwell confirms the end, as it did)."""
    if cyc.get("low_since", NO_TIME) != NO_TIME:
        return cyc["low_since"]
    return cyc.get("since", NO_TIME) if cyc.get("state") == ENDING else NO_TIME


def _now(t: Any, wall: Any, synced: Any, boot: Any) -> dict[str, Any]:
    return {"mono_ns": t, "wall": wall, "synced": synced, "boot_id": boot}


def _slice_v1(d: dict[str, Any]) -> dict[str, Any]:
    return {"kind": d["kind"], "function": d["function"], "cycle_id": d["cycle_id"],
            "start": _now(d["t0"], d["w0"], d["s0"], d["boot"]), "end": _now(d["t1"], d["w1"], d["s1"], d["boot"]),
            "peak_mw": d["peak"], "mwh": d["e"], "weight": d["w"], "dur_ns": d["dur"], "ends_cycle": d["ends_cycle"]}


def _use_v1(d: dict[str, Any]) -> dict[str, Any] | str:
    if not d:
        return ""  # started, no record yet
    return {"start_ns": d["t0"], "start_wall": d["w0"], "start_synced": d["s0"],
            "end": _now(d["t1"], d["w1"], d["s1"], d["boot"]), "start_boot": d.get("start_boot", ""),
            "mwh": d["e"], "duration_ms": d["dur"], "peak_mw": d["peak"]}


def upgrade_v3(s: dict[str, Any]) -> dict[str, Any]:
    """Version 3 data as version 4: every power is a measured one (version 3 did not mark a bound)."""
    meter = s.get("meter")
    if not isinstance(meter, dict):
        return {**s, "v": 4}  # (the decoder names what is wrong)
    cursor, deferred = meter.get("cursor"), meter.get("deferred")
    if isinstance(cursor, dict):
        meter = {**meter, "cursor": {**cursor, "bounded": 0}}
    if isinstance(deferred, list):
        meter = {**meter, "deferred": [{**d, "bound": 0} if isinstance(d, dict) else d for d in deferred]}
    return {**s, "v": 4, "meter": meter}


def upgrade_v2(s: dict[str, Any]) -> dict[str, Any]:
    """Version 2 data as version 3: nothing deferred to the next reading, nothing waiting to settle (version 2 did
    neither)."""
    meter = s.get("meter")
    if not isinstance(meter, dict):
        return {**s, "v": 3}  # (the decoder names what is wrong)
    auth = meter.get("authority")
    if isinstance(auth, dict):
        meter = {**meter, "authority": {**auth, "unsettled_mwh": 0, "step_mwh": 0, "last_delta_mwh": 0,
                                            "behind_mws": 0, "lagging": 0}}
    return {**s, "v": 3, "meter": {**meter, "deferred": []}}


def upgrade_v1(s: dict[str, Any]) -> dict[str, Any]:
    """Version 1 data rewritten as version 2 data (the same state, named by the value types)."""
    boot = s["last_boot"]
    on, mt, mw, ms, me, mpw, mdur, mpeak, mprepeak = s["mark"]
    mark = {"at": _now(mt, mw, ms, boot), "peak_before": mprepeak, "peak_mw": mpeak, "mwh": me, "weight": mpw,
            "dur_ns": mdur} if on else ""
    seg = {"function": s["o_fn"], "cycle_id": s["o_cyc"], "start": _now(s["o_t0"], s["o_w0"], s["o_s0"], boot),
           "due_ns": s["due"], "peak_mw": s["o_peak"], "mwh": s["o_e"], "weight": s["o_w"], "dur_ns": s["o_dur"],
           "mark": mark} if s["open"] else ""
    gap = {"reason": s["gap"], "start": _now(s["g_t"], s["g_w"], s["g_s"], s["g_boot"])} if s["gap"] else ""
    meter = {
        "cursor": {"last_ns": s["last_t"], "boot": boot, "mono_ns": s["ct"], "wall": s["cw"], "synced": s["cs"],
                   "power_mw": s["p"], "acc": s["acc"], "seen_power": s["seen_power"]},
        "seg": seg, "held": [_slice_v1(d) for d in s["held"]], "gap": gap, "stopped": s["stopped"],
        "authority": {"last": _now(s["auth_t"], s["auth_wall"], 1, s["auth_boot"]), "chain_mwh": s["chain"],
                      "identity": s["identity"], "swap_pending": s["swap_pending"]},
        "cycle_id": s["cycle_id"], "uses": {k: _use_v1(v) for k, v in s["cycles"].items()},
        "signals": s["signals"], "counters": {"readings": s["readings"], "ignored": 0, "rejected": s["rejected"]},
    }
    return {"v": 2, "appliance": s["appliance"], "kind": s["kind"], "source": s["source"], "meter": meter,
            "detector": s["detector"], "cycle": s["cycle"],
            "authority": {"last_raw": s["auth"]["last_raw"], "offset": s["auth"]["offset"]}}
