"""cloud/schemas describe every payload of the contract: what our code produces validates, malformed ones do not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from cloud import commands as cmds
from cloud.openmeter import to_cloudevent
from cloud.store import Ack
from koto.canonical import canonical_bytes
from koto.signing import generate_key
from tests.support.events import EventFactory
from tests.support.paths import REPO
from tests.support.schemas import SCHEMAS, errors

NOW = 1_790_000_000.0


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_2020_12_schema(path: Path):
    doc = json.loads(path.read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith("/" + path.name)


def birth() -> dict:
    return {"online": True, "gateway": "gw-1", "version": "0.1.0", "boot_id": "b00t", "epoch": 1, "last_seq": 42,
            "unacked": 3, "tariff_version": 2, "last_dseq": "7", "clock_synced": True,
            "time": "2026-11-30T01:02:03.045Z"}


def test_usage_events_of_every_type_validate():
    f = EventFactory("gw-1")
    usage = f.next()
    clock = f.next(type_="io.koto.clock.v1", data={"event": "synced", "step_ms": 12})
    life = f.next(type_="io.koto.lifecycle.v1", data={"event": "start", "version": "0.1.0"})
    assert errors("event-usage.json", usage) == [] and errors("event.json", usage) == []
    assert errors("event-clock.json", clock) == [] and errors("event.json", clock) == []
    assert errors("event-lifecycle.json", life) == [] and errors("event.json", life) == []


@pytest.mark.parametrize("breakage", [
    lambda e: e.pop("sig"),
    lambda e: e.update(sequence="1"),
    lambda e: e.update(prevhash="XYZ"),
    lambda e: e.update(type="io.koto.usage.v2"),
    lambda e: e.update(timestatus=True),
    lambda e: e["data"].update(energy_mwh=1.5),
    lambda e: e["data"].pop("seq"),
    lambda e: e.update(extra="not in the contract"),
], ids=["no-sig", "short-sequence", "bad-prevhash", "unknown-type", "bool-timestatus", "float-energy",
        "no-seq", "unknown-extension"])
def test_malformed_events_do_not_validate(breakage):
    ev = json.loads(EventFactory("gw-1").next())
    breakage(ev)
    assert errors("event.json", ev) != []


def test_status_ack_reply_and_live_validate_and_their_malformed_twins_do_not():
    assert errors("birth.json", birth()) == [] and errors("status.json", birth()) == []
    assert errors("will.json", {"online": False, "gateway": "gw-1"}) == []
    assert errors("status.json", {"online": False, "gateway": "gw-1"}) == []
    assert errors("birth.json", {**birth(), "online": 1}) != []
    assert errors("birth.json", {**birth(), "clock_synced": 0}) != []
    assert errors("will.json", {"online": 0, "gateway": "gw-1"}) != []
    f = EventFactory("gw-1")
    f.chain(3)
    assert errors("ack.json", Ack("gw-1", 1, 3, f.head).payload()) == []
    assert errors("ack.json", {"epoch": 1, "acked_through": 3, "head_hash": "abc"}) != []
    assert errors("ack.json", {"epoch": 1, "acked_through": 0, "head_hash": f.head}) != []
    reply = {"ack_of": "c1", "status": "applied", "reason": "", "dseq": "7", "gateway": "gw-1",
             "time": "2026-11-30T01:02:03.045Z"}
    assert errors("reply.json", reply) == []
    assert errors("reply.json", {**reply, "report": {"uptime_s": 5}}) == []
    assert errors("reply.json", {**reply, "status": "ok"}) != []
    live = {"t": "2026-11-30T01:02:03.045Z", "appliances": {"washer-1": {"power_mw": 2000, "function": "wash"}}}
    assert errors("live.json", live) == []
    assert errors("live.json", {**live, "appliances": {"w": {"power_mw": 2.5, "function": "x"}}}) != []


def built_commands() -> dict[str, dict]:
    key = generate_key()
    tariff = cmds.tariff_data({"id": "home", "version": 2, "currency": "EUR",
                               "rates": [{"match": "*", "per_kwh": "0.32"}, {"match": "washer-1/*", "per_use": "0.5"}],
                               "windows": [{"name": "night", "days": ["mon", "tue"], "start": "22:00", "end": "06:00",
                                            "rates": [{"match": "*", "per_kwh": "0.2"}]}]})
    grant = cmds.entitlement_data({"id": "e1", "version": 1, "appliance": "washer-1", "function": "wash_40",
                                   "kind": "uses", "limit": 10, "valid_until": "2027-01-01T00:00:00Z"})
    kwh = cmds.entitlement_data({"id": "e2", "version": 1, "appliance": "oven", "kind": "kwh", "limit": "12.5"})
    revoke = cmds.entitlement_data({"id": "e1", "version": 2, "action": "revoke"})
    profile = cmds.profile_data(REPO / "metering" / "profiles" / "kettle.toml", "kettle", 2)
    out = {}
    for i, (name, t, data) in enumerate([
        ("tariff", cmds.TARIFF, tariff), ("grant", cmds.ENTITLEMENT, grant), ("kwh", cmds.ENTITLEMENT, kwh),
        ("revoke", cmds.ENTITLEMENT, revoke), ("profile", cmds.PROFILE, profile),
        ("diagnostics", cmds.DIAGNOSTICS, {}),
    ], start=1):
        out[name] = cmds.build_command(key, "gw-1", t, data, i, now=NOW)
    return out


def test_every_command_the_cli_builds_validates():
    per_type = {cmds.TARIFF: "cmd-tariff.json", cmds.ENTITLEMENT: "cmd-entitlement.json",
                cmds.PROFILE: "cmd-profile.json", cmds.DIAGNOSTICS: "cmd-diagnostics.json"}
    for name, c in built_commands().items():
        assert errors(per_type[c["type"]], c) == [], name
        assert errors("command.json", canonical_bytes(c)) == [], name


@pytest.mark.parametrize("breakage", [
    lambda c: c.update(type="io.koto.cmd.reboot.v1"),
    lambda c: c.update(dseq=7),
    lambda c: c.pop("expirytime"),
    lambda c: c.update(subject="gw-1"),
    lambda c: c["data"].update(currency="euro"),
    lambda c: c["data"].update(version=0),
], ids=["unknown-type", "int-dseq", "no-expiry", "bare-subject", "bad-currency", "version-0"])
def test_malformed_commands_do_not_validate(breakage):
    c = built_commands()["tariff"]
    breakage(c)
    assert errors("command.json", c) != []


def test_diagnostics_carries_no_data():
    c = built_commands()["diagnostics"]
    c["data"] = {"x": "1"}
    assert errors("cmd-diagnostics.json", c) != []


def test_the_openmeter_batch_validates():
    f = EventFactory("gw-1")
    batch = [to_cloudevent(b) for b in f.chain(3)]
    assert errors("openmeter-batch.json", batch) == []
    assert errors("openmeter-batch.json", [{**batch[0], "sig": "x"}]) != []


def test_command_time_and_expiry_follow_the_clock():
    c = cmds.build_command(generate_key(), "gw-1", cmds.DIAGNOSTICS, {}, 1, now=time.time(), expires_in_s=60)
    from koto.canonical import parse_rfc3339
    assert 59 <= parse_rfc3339(c["expirytime"]) - parse_rfc3339(c["time"]) <= 61


def test_the_asyncapi_document_references_existing_schemas_for_every_channel():
    # Read as text (no YAML parser among the dependencies): every payload $ref resolves, every schema of a
    # message is referenced, every channel of the contract is there.
    import re

    text = (REPO / "docs" / "asyncapi.yaml").read_text()
    assert text.startswith("asyncapi: 3.0.0")
    refs = set(re.findall(r"\$ref: '(\.\./cloud/schemas/[a-z0-9-]+\.json)'", text))
    for ref in refs:
        assert (REPO / "docs" / ref).resolve().is_file(), ref
    assert {Path(r).name for r in refs} == {"event.json", "birth.json", "will.json", "reply.json", "live.json",
                                            "ack.json", "cmd-tariff.json", "cmd-entitlement.json",
                                            "cmd-profile.json", "cmd-diagnostics.json"}
    addresses = set(re.findall(r"address: koto/v1/\{gateway\}/(\S+)", text))
    assert addresses == {"up/usage", "up/status", "up/reply", "up/live", "down/ack", "down/cmd"}
