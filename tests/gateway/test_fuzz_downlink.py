"""Fuzzing downlink commands: random payloads, and validly signed commands mutated after signing.

Outside bytes enter at `DownlinkHandler.handle(payload)`, straight from the MQTT `down/cmd` topic. The peers are
real (a ledger on disk, pricing, commands signed by the reference cloud's `build_command` with an operator key).
The properties, for every payload:
- `handle` never raises and always returns a reply (`ack_of`, `status`, `reason`), counted under its status;
- no rejection comes from an unexpected exception (the handler's catch-all, meant for a ledger that cannot commit,
  says "could not apply the command now"): every bad command is a `Rejected` with its reason;
- nothing is applied unless it is exactly what the operator signed: an applied payload, parsed, equals the signed
  command apart from the signature's encoding, and verifies under the pinned key; otherwise the ledger's head and
  `last_dseq` do not move.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cloud.commands import build_command
from gateway.downlink import (
    CMD_DIAGNOSTICS,
    CMD_ENTITLEMENT,
    CMD_PROFILE,
    CMD_TARIFF,
    COMMAND_TYPES,
    KV_LAST_DSEQ,
    DownlinkHandler,
)
from koto.canonical import canonical_bytes
from koto.clock import ManualClock
from koto.signing import generate_key, verify_event
from metering.ledger import Ledger
from metering.pricing import Pricing
from tests.support.fuzzing import fuzz_settings, get_at, paths
from tests.support.gw_child import open_ledger

GW = "gw-fuzz-1"
NOW = 1_764_460_800.0
OPERATOR = generate_key()
STRANGER = generate_key()
FIELDS = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dseq", "expirytime", "sig",
          "data")
PROFILE_TOML = 'name = "kettle2"\nmax_power_w = 3200\n\n[[function]]\nname = "boil"\non_above_w = 1000\n'


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock(wall=NOW)
        self.ledger: Ledger = open_ledger(tmp / "gw", GW)
        self.pricing = Pricing(tz="UTC")
        self.profiles: list[tuple[str, int, str]] = []
        self.handler = DownlinkHandler(self.ledger, self.pricing, [OPERATOR.public_key()], GW, self.clock,
                                       on_profile=lambda n, v, t: self.profiles.append((n, v, t)))
        self.dseq = itertools.count(1)
        self.sent = 0

    def state(self) -> tuple[int, str | None]:
        return self.ledger.head()[0], self.ledger.kv_get(KV_LAST_DSEQ)

    def send(self, payload: bytes) -> dict[str, Any]:
        before = sum(self.handler.counts.values())
        reply = self.handler.handle(payload)  # must never raise
        self.sent += 1
        assert sum(self.handler.counts.values()) == before + 1
        assert set(reply) >= {"ack_of", "status", "reason", "dseq", "gateway", "time"}
        assert reply["status"] in ("applied", "duplicate", "rejected")
        assert isinstance(reply["reason"], str) and reply["reason"]
        assert not reply["reason"].startswith("could not apply the command now"), reply["reason"]
        return reply


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=5,
)
simple = st.none() | st.booleans() | st.integers() | st.text(max_size=30) | st.sampled_from(["1.0", "1", "0"])
contract_shaped = st.fixed_dictionaries({}, optional={f: simple for f in FIELDS if f != "data"} | {"data": json_value})
garbage = st.one_of(
    st.binary(max_size=300),
    json_value.map(lambda v: json.dumps(v).encode()),
    contract_shaped.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b'{"data":' + b"[" * n),
)


def test_random_payloads_are_rejected_with_a_reason_and_apply_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)

    @fuzz_settings(500)
    @given(payload=garbage)
    @example(payload=b'{"data":' + b"[" * 3000)  # RecursionError: was a catch-all "could not apply now"
    @example(payload=b"\xff\xfe")
    @example(payload=b'{"sig": 5}')
    def run(payload: bytes) -> None:
        before = w.state()
        reply = w.send(payload)
        assert reply["status"] == "rejected"
        assert w.state() == before

    try:
        run()
    finally:
        w.ledger.close()


def valid_data(typ: str, version: int) -> dict[str, Any]:
    if typ == CMD_TARIFF:
        return {"id": "home", "version": version, "currency": "EUR", "exponent": 2,
                "rates": [{"match": "*", "per_kwh": "0.30"}], "windows": []}
    if typ == CMD_ENTITLEMENT:
        return {"id": "e1", "version": version, "action": "grant", "appliance": "washer", "function": "*",
                "kind": "uses", "limit": 10}
    if typ == CMD_PROFILE:
        return {"name": "kettle2", "version": version, "toml": PROFILE_TOML}
    return {}


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, Any]:
    how = draw(st.sampled_from(["none", "replace", "delete", "add", "bytes", "sig", "forged", "replay"]))
    if how == "replace":
        return how, (draw(st.integers(0, 10**6)), draw(json_value | st.text(max_size=30)))
    if how == "delete":
        return how, draw(st.integers(0, 10**6))
    if how == "add":
        return how, (draw(st.integers(0, 10**6)), draw(st.text(max_size=8)), draw(json_value))
    if how == "bytes":
        return how, draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)),
                                  min_size=1, max_size=3))
    if how == "sig":
        return how, (draw(st.integers(0, 200)), draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/=")))
    return how, None


def mutate(cmd: dict[str, Any], how: str, arg: Any, last: bytes | None) -> bytes:
    if how == "none":
        return canonical_bytes(cmd)
    if how == "forged":
        return canonical_bytes({**cmd, "sig": build_command(STRANGER, GW, cmd["type"], cmd["data"], int(cmd["dseq"]),
                                                            now=NOW, id_=cmd["id"])["sig"]})
    if how == "replay":
        return last if last is not None else canonical_bytes(cmd)
    if how == "bytes":
        data = bytearray(canonical_bytes(cmd))
        for op, pos, b in arg:
            i = pos % (len(data) + 1)
            if op == 0 and i < len(data):
                data[i] = b
            elif op == 1:
                data[i:i] = bytes([b])
            elif i < len(data):
                del data[i]
        return bytes(data)
    if how == "sig":
        i, c = arg
        sig = cmd["sig"]
        i %= len(sig) + 1
        return canonical_bytes({**cmd, "sig": sig[:i] + c + sig[i + 1:]})
    event = json.loads(canonical_bytes(cmd))
    where = paths(event)
    if how == "replace":
        path = where[arg[0] % len(where)]
        set_at(event, path, arg[1])
    elif how == "delete":
        path = where[arg % len(where)]
        parent = get_at(event, path[:-1])
        del parent[path[-1]]
    elif how == "add":
        dicts = [p for p in [(), *where] if isinstance(get_at(event, p), dict)]
        get_at(event, dicts[arg[0] % len(dicts)])[arg[1]] = arg[2]
    return json.dumps(event).encode()


def set_at(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    get_at(obj, path[:-1])[path[-1]] = value


def without_sig(event: Any) -> Any:
    return {k: v for k, v in event.items() if k != "sig"} if isinstance(event, dict) else event


def test_signed_commands_mutated_after_signing_are_never_applied(tmp_path: Path) -> None:
    w = World(tmp_path)
    last: list[bytes] = []

    @fuzz_settings(200)
    @given(typ=st.sampled_from(COMMAND_TYPES), mutation=mutations())
    @example(typ=CMD_TARIFF, mutation=("none", None))
    @example(typ=CMD_PROFILE, mutation=("replace", (0, "x")))
    def run(typ: str, mutation: tuple[str, Any]) -> None:
        dseq = next(w.dseq)
        cmd = build_command(OPERATOR, GW, typ, valid_data(typ, dseq), dseq, now=w.clock.wall)
        how, arg = mutation
        payload = mutate(cmd, how, arg, last[-1] if last else None)
        before = w.state()
        reply = w.send(payload)
        if reply["status"] == "applied":
            event = json.loads(payload)
            assert without_sig(event) == without_sig(cmd)  # exactly what was signed, nothing else
            assert verify_event([OPERATOR.public_key()], event)
            assert w.state()[0] == before[0] + 1 and w.state()[1] == event["dseq"]
            last.append(payload)
        else:
            assert w.state() == before
            assert how != "none", reply  # an unmutated command must apply

    try:
        run()
    finally:
        w.ledger.close()


def test_a_valid_command_and_its_replay_are_applied_then_duplicate(tmp_path: Path) -> None:
    """The two outcomes the mutation test relies on, shown plainly."""
    w = World(tmp_path)
    try:
        cmd = build_command(OPERATOR, GW, CMD_DIAGNOSTICS, {}, 1, now=NOW)
        assert w.send(canonical_bytes(cmd))["status"] == "applied"
        assert w.send(canonical_bytes(cmd))["status"] == "duplicate"
    finally:
        w.ledger.close()


def test_a_flood_of_bad_commands_is_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Counted, logged once in plain words, survived: each gets its reply, the journal gets one line."""
    w = World(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="koto.downlink"):
            replies = [w.send(b"not json %d" % i) for i in range(50)]
        assert {r["status"] for r in replies} == {"rejected"} and w.handler.counts["rejected"] == 50
        assert len([r for r in caplog.records if r.name == "koto.downlink"]) == 1
    finally:
        w.ledger.close()
