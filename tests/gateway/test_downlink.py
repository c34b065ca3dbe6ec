"""Downlink commands: every rule of contract.md, a reply for every command, nothing applied unless all rules hold.

The peers are real: the ledger (metering.ledger), pricing (metering.pricing), commands signed with the operator
tooling of the reference cloud (cloud.commands.build_command), and in the last tests Mosquitto plus the receiver.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cloud.commands import build_command
from gateway.downlink import (
    CMD_DIAGNOSTICS,
    CMD_ENTITLEMENT,
    CMD_PROFILE,
    CMD_TARIFF,
    KV_LAST_DSEQ,
    DownlinkHandler,
)
from koto.canonical import canonical_bytes
from koto.clock import ManualClock
from koto.signing import PrivateKey, generate_key, sign_event
from metering.ledger import Ledger
from metering.pricing import Pricing
from metering.records import LIFECYCLE_TYPE, RecordKind, UsageRecord, usage_draft
from tests.support.gw_child import open_ledger
from tests.support.slow import scaled

GW = "gw-dl-1"
NOW = 1_764_460_800.0


def tariff_data(version: int, per_kwh: str = "0.30", tid: str = "home") -> dict[str, Any]:
    return {"id": tid, "version": version, "currency": "EUR", "exponent": 2,
            "rates": [{"match": "*", "per_kwh": per_kwh}], "windows": []}


def ent_data(version: int = 1, **kw: Any) -> dict[str, Any]:
    return {"id": "e1", "version": version, "action": "grant", "appliance": "washer", "function": "*",
            "kind": "uses", "limit": 10, **kw}


PROFILE_TOML = """
name = "kettle2"
max_power_w = 3200

[[function]]
name = "boil"
on_above_w = 1000
off_below_w = 600
"""


class World:
    def __init__(self, tmp: Path, *, keys: int = 1) -> None:
        self.clock = ManualClock(wall=NOW)
        self.ledger: Ledger = open_ledger(tmp / "gw", GW)
        self.pricing = Pricing(tz="UTC")
        self.operator = generate_key()
        self.next_operator = generate_key()
        pinned = [self.operator.public_key()] + ([self.next_operator.public_key()] if keys == 2 else [])
        self.profiles: list[tuple[str, int, str]] = []
        self.handler = DownlinkHandler(self.ledger, self.pricing, pinned, GW, self.clock,
                                       on_profile=lambda n, v, t: self.profiles.append((n, v, t)))
        self.dseq = 0

    def cmd(self, type_: str, data: dict[str, Any], *, dseq: int | None = None, key: PrivateKey | None = None,
            gateway: str = GW, expires_in_s: float = 3600, id_: str | None = None) -> dict[str, Any]:
        if dseq is None:
            self.dseq += 1
            dseq = self.dseq
        return build_command(key or self.operator, gateway, type_, data, dseq, now=self.clock.wall,
                             expires_in_s=expires_in_s, id_=id_)

    def send(self, event: dict[str, Any] | bytes) -> dict[str, Any]:
        payload = event if isinstance(event, bytes) else canonical_bytes(event)
        return self.handler.handle(payload)

    def lifecycle(self) -> list[dict[str, Any]]:
        return [r.event()["data"] for r in self.ledger.iter_records() if r.type == LIFECYCLE_TYPE]


@pytest.fixture
def w(tmp_path: Path) -> Any:
    world = World(tmp_path)
    yield world
    world.ledger.close()


def washer_record() -> UsageRecord:
    return UsageRecord(kind=RecordKind.FUNCTION, appliance="washer", source="plug", function="wash",
                       t_start_mono_ns=0, t_end_mono_ns=60 * 10**9, t_start_wall=NOW, t_end_wall=NOW + 60,
                       boot_id="b", energy_mwh=500_000, duration_ms=60_000)


def assert_nothing_applied(w: World, lifecycle_before: int = 0, dseq: str | None = None) -> None:
    assert len(w.lifecycle()) == lifecycle_before
    assert w.ledger.kv_get(KV_LAST_DSEQ) == dseq
    if lifecycle_before == 0:
        assert w.pricing.tariffs == () and len(w.pricing.entitlements) == 0


# -- valid commands -------------------------------------------------------------------------------------------

def test_a_valid_tariff_is_applied_recorded_and_shows_in_the_next_records(w: World) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(3))
    reply = w.send(cmd)
    assert reply["status"] == "applied" and reply["ack_of"] == cmd["id"] and reply["dseq"] == "1"
    assert reply["gateway"] == GW and reply["time"]
    assert [t.version for t in w.pricing.tariffs] == [3]
    assert w.lifecycle() == [{"event": "command_applied", "command_type": CMD_TARIFF, "command_id": cmd["id"],
                              "dseq": "1", "version": 3, "epoch": w.ledger.epoch, "seq": 1}]
    assert w.ledger.doc("tariff", "home").version == 3  # type: ignore[union-attr]
    assert w.handler.tariff_version() == 3 and w.handler.last_dseq_text() == "1"
    rec = washer_record()
    w.pricing.price(rec)
    stored = w.ledger.append([usage_draft(rec, "urn:koto:appliance:washer")])[0]
    data = stored.event()["data"]
    assert (data["tariff_id"], data["tariff_version"], data["currency"], data["cost_minor"]) == ("home", 3, "EUR", 15)
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(4, per_kwh="0.50")))["status"] == "applied"
    rec = washer_record()
    w.pricing.price(rec)
    assert (rec.tariff_version, rec.cost_minor) == (4, 25)


def test_a_valid_entitlement_grant_and_revoke_change_what_the_next_records_show(w: World) -> None:
    assert w.send(w.cmd(CMD_ENTITLEMENT, ent_data(1)))["status"] == "applied"
    rec = washer_record()
    w.pricing.price(rec)
    assert (rec.entitled, rec.entitlement_id) == ("yes", "e1")
    reply = w.send(w.cmd(CMD_ENTITLEMENT, {"id": "e1", "version": 2, "action": "revoke"}))
    assert reply["status"] == "applied" and "revoked" in reply["reason"]
    rec = washer_record()
    w.pricing.price(rec)
    assert rec.entitled == "no"
    assert [d["command_type"] for d in w.lifecycle()] == [CMD_ENTITLEMENT, CMD_ENTITLEMENT]
    doc = w.ledger.doc("entitlement", "e1")
    assert doc is not None and doc.version == 2 and doc.body["action"] == "revoke" and doc.body["appliance"] == "washer"


def test_an_applied_command_is_one_info_line_in_the_journal(w: World, caplog: pytest.LogCaptureFixture) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(3))
    with caplog.at_level(logging.INFO, logger="koto.downlink"):
        w.send(cmd)
    said = [r for r in caplog.records if r.name == "koto.downlink"]
    assert [r.levelno for r in said] == [logging.INFO]
    assert cmd["id"] in said[0].getMessage() and "tariff home version 3 applied" in said[0].getMessage()


def test_a_grant_for_an_appliance_the_gateway_lacks_is_kept_and_the_reply_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = World(tmp_path)
    w.handler.appliances = lambda: ["washer", "dryer"]
    with caplog.at_level(logging.WARNING, logger="koto.downlink"):
        reply = w.send(w.cmd(CMD_ENTITLEMENT, ent_data(1, appliance="dishwasher")))
    assert reply["status"] == "applied"
    assert "no appliance 'dishwasher' (it has dryer, washer)" in reply["reason"]
    assert any("dishwasher" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "no appliance" not in w.send(w.cmd(CMD_ENTITLEMENT, ent_data(2)))["reason"]  # washer: it has one


def test_a_valid_profile_is_stored_and_handed_to_the_meter(w: World) -> None:
    reply = w.send(w.cmd(CMD_PROFILE, {"name": "kettle2", "version": 1, "toml": PROFILE_TOML}))
    assert reply["status"] == "applied"
    assert w.profiles == [("kettle2", 1, PROFILE_TOML)]
    assert w.ledger.doc("profile", "kettle2").body["toml"] == PROFILE_TOML  # type: ignore[union-attr]
    assert w.lifecycle()[0]["command_type"] == CMD_PROFILE


def test_diagnostics_replies_with_a_redacted_report(w: World) -> None:
    w.send(w.cmd(CMD_TARIFF, tariff_data(2)))
    w.handler.add_report_section("sync", lambda: {"connected": 1, "resends": 0})
    reply = w.send(w.cmd(CMD_DIAGNOSTICS, {}))
    assert reply["status"] == "applied"
    report = reply["report"]
    assert report["gateway"] == GW and report["tariffs"] == {"home": 2} and report["last_dseq"] == "2"
    assert report["ledger"]["head_seq"] == 2 and report["sync"] == {"connected": 1, "resends": 0}
    text = json.dumps(reply)
    for secret in ("PRIVATE KEY", "BEGIN", "sig", "per_kwh"):
        assert secret not in text


def test_both_pinned_operator_keys_are_accepted_during_a_rotation(tmp_path: Path) -> None:
    w = World(tmp_path, keys=2)
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(1), key=w.operator))["status"] == "applied"
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(2), key=w.next_operator))["status"] == "applied"
    w.ledger.close()


# -- rejected commands: each with the right status, one log line, and nothing applied ---------------------------

def test_a_command_without_the_optional_time_and_datacontenttype_is_applied(w: World) -> None:
    """CloudEvents requires only id, source, specversion and type; a cloud may leave `time` out."""
    cmd = {k: v for k, v in w.cmd(CMD_TARIFF, tariff_data(1)).items() if k not in ("time", "datacontenttype", "sig")}
    reply = w.send(json.dumps(sign_event(w.operator, cmd)).encode())
    assert reply["status"] == "applied", reply


def test_forged_command_signed_by_another_key_is_rejected(w: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="koto.downlink"):
        reply = w.send(w.cmd(CMD_TARIFF, tariff_data(1), key=generate_key()))
    assert (reply["status"], reply["reason"]) == ("rejected", "bad signature: not signed by a pinned operator key")
    assert len([r for r in caplog.records if r.name == "koto.downlink"]) == 1
    assert_nothing_applied(w)


def test_a_command_altered_after_signing_is_rejected(w: World) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(1))
    cmd["data"]["rates"][0]["per_kwh"] = "0.01"
    assert w.send(cmd)["reason"].startswith("bad signature")
    assert_nothing_applied(w)


def test_expired_command_is_rejected(w: World) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(1), expires_in_s=60)
    w.clock.advance(61)
    reply = w.send(cmd)
    assert reply["status"] == "rejected" and reply["reason"].startswith("expired")
    assert_nothing_applied(w)


def test_replayed_command_is_a_duplicate_and_applies_nothing_twice(w: World) -> None:
    cmd = w.cmd(CMD_ENTITLEMENT, ent_data(1))
    assert w.send(cmd)["status"] == "applied"
    reply = w.send(cmd)
    assert reply["status"] == "duplicate" and reply["ack_of"] == cmd["id"]
    assert_nothing_applied(w, 1, "1")


def test_stale_dseq_with_a_new_id_is_rejected(w: World) -> None:
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(1), dseq=5))["status"] == "applied"
    for dseq in (5, 4):
        reply = w.send(w.cmd(CMD_TARIFF, tariff_data(9), dseq=dseq))
        assert reply["status"] == "rejected" and "not above the last applied 5" in reply["reason"]
    assert_nothing_applied(w, 1, "5")
    assert [t.version for t in w.pricing.tariffs] == [1]


def test_stale_version_with_a_fresh_dseq_is_rejected(w: World) -> None:
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(3)))["status"] == "applied"
    for v in (3, 2):
        reply = w.send(w.cmd(CMD_TARIFF, tariff_data(v, per_kwh="9")))
        assert reply["status"] == "rejected" and reply["reason"].startswith("stale tariff")
    assert w.send(w.cmd(CMD_PROFILE, {"name": "kettle2", "version": 2, "toml": PROFILE_TOML}))["status"] == "applied"
    reply = w.send(w.cmd(CMD_PROFILE, {"name": "kettle2", "version": 1, "toml": PROFILE_TOML}))
    assert reply["status"] == "rejected" and reply["reason"].startswith("stale profile")
    assert_nothing_applied(w, 2, "4")
    assert [t.version for t in w.pricing.tariffs] == [3]


def test_command_for_another_gateway_is_rejected(w: World) -> None:
    reply = w.send(w.cmd(CMD_TARIFF, tariff_data(1), gateway="gw-other"))
    assert reply["status"] == "rejected" and reply["reason"].startswith("wrong subject")
    assert_nothing_applied(w)


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[1, 2]", "malformed command: not a JSON object"),
    (b'{"id": "x"}', "malformed command: specversion must be a string"),
])
def test_malformed_json_is_rejected_with_an_empty_ack_of(w: World, payload: bytes, reason: str) -> None:
    reply = w.send(payload)
    assert (reply["status"], reply["ack_of"], reply["dseq"]) == ("rejected", "", "")
    assert reply["reason"].startswith(reason)
    assert_nothing_applied(w)


@pytest.mark.parametrize("field, value", [
    ("dseq", 7), ("dseq", "07"), ("dseq", "-1"), ("data", "x"), ("expirytime", "tomorrow"), ("subject", None),
    ("id", ""), ("specversion", "0.3"), ("sig", 5), ("time", 1764460800), ("datacontenttype", ["json"]),
])
def test_wrong_types_are_rejected(w: World, field: str, value: Any) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(1))
    cmd[field] = value
    if field != "sig":
        cmd = sign_event(w.operator, cmd) if value is not None else cmd  # signed, so only the type is wrong
    reply = w.send(json.dumps(cmd).encode())
    assert reply["status"] == "rejected" and reply["reason"].startswith(("malformed", "specversion"))
    assert_nothing_applied(w)


@pytest.mark.parametrize("type_, data, reason", [
    (CMD_TARIFF, {"id": "home", "version": "3", "currency": "EUR"}, "bad tariff"),
    (CMD_TARIFF, {"id": "home", "version": 1, "currency": "euro"}, "bad tariff"),
    (CMD_ENTITLEMENT, {"id": "e1", "version": 1, "appliance": "washer", "kind": "uses", "limit": "many"},
     "bad entitlement"),
    (CMD_PROFILE, {"name": "k", "version": 1, "toml": "name = "}, "bad profile: the TOML does not parse"),
    (CMD_PROFILE, {"name": "k", "version": 1, "toml": "name = 'k'\nbogus = 1"}, "bad profile"),
    (CMD_PROFILE, {"name": "k", "version": "1", "toml": PROFILE_TOML}, "bad profile: version"),
])
def test_signed_commands_with_bad_data_are_rejected(w: World, type_: str, data: dict[str, Any], reason: str) -> None:
    payload = json.dumps(sign_event(w.operator, {**w.cmd(type_, {}), "data": data})).encode()
    reply = w.send(payload)
    assert reply["status"] == "rejected" and reply["reason"].startswith(reason)
    assert_nothing_applied(w)
    assert w.profiles == []


def test_huge_payload_is_rejected_unread(w: World) -> None:
    cmd = w.cmd(CMD_DIAGNOSTICS, {})
    cmd["padding"] = "x" * 70_000
    reply = w.send(json.dumps(cmd).encode())
    assert reply["status"] == "rejected" and "the limit is 65536" in reply["reason"] and reply["ack_of"] == ""
    assert_nothing_applied(w)


def test_unknown_type_is_rejected(w: World) -> None:
    cmd = w.cmd(CMD_TARIFF, tariff_data(1))
    cmd = sign_event(w.operator, {**cmd, "type": "io.koto.cmd.reboot.v1"})
    reply = w.send(cmd)
    assert reply["status"] == "rejected" and reply["reason"].startswith("unknown command type")
    assert_nothing_applied(w)


def test_a_rejected_command_does_not_use_up_its_dseq(w: World) -> None:
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(1), dseq=1, key=generate_key()))["status"] == "rejected"
    assert w.send(w.cmd(CMD_TARIFF, tariff_data(1), dseq=1))["status"] == "applied"


def test_state_survives_a_restart_replays_stay_duplicates(tmp_path: Path) -> None:
    w = World(tmp_path)
    cmd = w.cmd(CMD_TARIFF, tariff_data(1))
    w.send(cmd)
    w.ledger.close()
    w2 = World(tmp_path)
    w2.operator = w.operator
    w2.handler.operator_keys = [w.operator.public_key()]
    assert w2.send(cmd)["status"] == "duplicate"
    assert w2.handler.tariff_version() == 1
    w2.ledger.close()


# -- over MQTT: the cloud's operator tooling sends, the gateway applies and replies, the receiver stores both ---

async def test_commands_over_mqtt_get_replies_and_their_lifecycle_records_reach_the_cloud(tmp_path: Path) -> None:
    from cloud.commands import BrokerOptions, send_command
    from cloud.receiver import Receiver, ReceiverConfig
    from cloud.store import SqliteStore
    from gateway.config import SyncConfig
    from gateway.sync import Sync
    from koto.signing import public_pem
    from tests.support.broker import Mosquitto
    from tests.support.gw_child import device_key

    w = World(tmp_path)
    store = SqliteStore(tmp_path / "cloud.db")
    store.register(GW, public_pem(device_key(tmp_path / "gw")))
    with Mosquitto(tmp_path / "broker") as broker:
        cfg = SyncConfig(gateway_id=GW, broker=broker.url, backoff_initial_s=0.1, backoff_cap_s=0.5)
        async with Receiver(store, ReceiverConfig(broker=broker.url)), \
                Sync(cfg, w.ledger, clock=w.clock, downlink=w.handler) as sync:
            # An operator sends to a gateway that is online: its birth (published once it has subscribed to
            # down/cmd) has reached the cloud. Before its first subscription the broker would drop the command.
            with SqliteStore(tmp_path / "cloud.db") as probe:
                async with asyncio.timeout(10):
                    while probe.birth(GW) is None:  # noqa: ASYNC110 - polling another connection's commits
                        await asyncio.sleep(0.02)
            opts = BrokerOptions(broker.url)
            ok = await send_command(opts, GW, w.cmd(CMD_TARIFF, tariff_data(5)), wait_reply_s=10)
            forged = await send_command(opts, GW, w.cmd(CMD_TARIFF, tariff_data(6), key=generate_key()),
                                        wait_reply_s=10)
            diag = await send_command(opts, GW, w.cmd(CMD_DIAGNOSTICS, {}), wait_reply_s=10)
            await asyncio.wait_for(sync.wait_acked(2), scaled(10))
    assert ok is not None and ok["status"] == "applied"
    assert forged is not None and forged["status"] == "rejected"
    assert diag is not None and diag["report"]["sync"]["connected"] == 1
    assert [json.loads(b)["data"]["command_type"] for b in store.bodies(GW)] == [CMD_TARIFF, CMD_DIAGNOSTICS]
    assert w.ledger.acked_through() == 2
    store.close()
    w.ledger.close()


def test_after_a_restart_pricing_is_rebuilt_from_what_the_ledger_holds(tmp_path: Path) -> None:
    from gateway.downlink import restore_from_ledger

    w = World(tmp_path)
    w.send(w.cmd(CMD_TARIFF, tariff_data(2)))
    w.send(w.cmd(CMD_ENTITLEMENT, ent_data(1)))
    w.send(w.cmd(CMD_ENTITLEMENT, {"id": "e1", "version": 2, "action": "revoke"}))
    w.send(w.cmd(CMD_PROFILE, {"name": "kettle2", "version": 1, "toml": PROFILE_TOML}))
    w.ledger.close()
    w2 = World(tmp_path)  # a fresh process: empty pricing, as if the snapshot predates the commands
    assert restore_from_ledger(w2.ledger, w2.pricing, lambda *p: w2.profiles.append(p)) == {
        "tariff": 1, "entitlement": 1, "profile": 1}
    assert [t.version for t in w2.pricing.tariffs] == [2]
    rec = washer_record()
    w2.pricing.price(rec)
    assert (rec.tariff_version, rec.entitled) == (2, "no")  # revoked stays gated
    assert w2.profiles == [("kettle2", 1, PROFILE_TOML)]
    assert restore_from_ledger(w2.ledger, w2.pricing) == {"tariff": 0, "entitlement": 0, "profile": 0}
    w2.ledger.close()


def test_a_cloud_that_counts_from_zero_gets_its_first_command_applied(w: World) -> None:
    """common.json: dseq 0 .. 10^16-1. A new gateway has applied none, so a cloud whose counter starts at 0 is
    heard; the next must be above it, as always."""
    built = w.cmd(CMD_DIAGNOSTICS, {}, dseq=1)  # koto-cloud itself counts from 1: this one is signed by hand
    first = json.dumps(sign_event(w.operator, {**{k: v for k, v in built.items() if k != "sig"}, "dseq": "0"}))
    assert w.send(first.encode())["status"] == "applied" and w.handler.last_dseq_text() == "0"
    assert w.send(first.encode())["status"] == "duplicate"
    assert w.send(w.cmd(CMD_DIAGNOSTICS, {}, dseq=1))["status"] == "applied"
