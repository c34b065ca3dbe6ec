"""`koto doctor`: the failure line for each broken piece, found against real peers (a pty, a real Mosquitto with TLS,
real certificates, folders owned by another user); only the kernel's adjtimex answer is faked."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.doctor import Check, Context, make_context, run_doctor
from gateway.doctor_checks_cloud import check_broker, check_certificates
from gateway.doctor_checks_hardware import check_gpio, check_serial_ports
from gateway.doctor_checks_ledger import check_backlog, check_ledger
from gateway.doctor_checks_system import check_clock, check_state_folder, check_user_groups
from gateway.state import StateDir
from tests.support.as_user import AS_ROOT, koto_as_other_user
from tests.support.broker import Mosquitto, free_port
from tests.support.pki import TestPKI

pytestmark = pytest.mark.skipif(not AS_ROOT, reason="judges files owned by root for the user nobody")

DOCTOR_MODULES = ("grp", "importlib.readers", "gateway.cli_doctor", "gateway.doctor", "gateway.doctor_checks_system",
                  "gateway.doctor_checks_hardware", "gateway.doctor_checks_cloud", "gateway.doctor_checks_ledger",
                  "gateway.config_check", "gateway.config_tariff", "gateway.status", "gpiozero", "cryptography.x509")
USER = "nobody"  # the service user in these tests: not root, in no group


def write_config(tmp: Path, *, port: str | None = None, cloud: str = "") -> Path:
    source = (f'driver = "modbus"\nmodel = "sdm120"\nport = "{port}"\naddress = 1' if port else
              'driver = "s0"\npin = 17\nimp_per_kwh = 1000')
    text = (f'[gateway]\nid = "gw-doc"\nstate_dir = "state"\n\n{cloud}\n'
            f'[[appliance]]\nid = "washer"\nprofile = "washing_machine"\n[appliance.sources.m]\n{source}\n')
    p = tmp / "koto.toml"
    p.write_text(text)
    return p


def one(got: Check | list[Check], name: str | None = None) -> Check:
    checks = got if isinstance(got, list) else [got]
    failed = [c for c in checks if c.status != "ok" and (name is None or c.name == name)]
    assert len(failed) == 1, checks
    return failed[0]


def test_a_state_folder_owned_by_root_is_the_crash_loop(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    StateDir(tmp_path / "state").provision()  # made by root, as `sudo koto provision` would
    c = one(check_state_folder(make_context(cfg, user=USER)))
    assert c.status == "fail"
    mode = stat.filemode((tmp_path / "state").stat().st_mode)
    assert c.summary == (f"{tmp_path / 'state'} ({mode} root:root) is owned by root, not nobody: the service "
                         "cannot write its ledger and restarts in a loop")
    assert c.fix == f"give it to the service user: sudo chown -R nobody:nogroup {tmp_path / 'state'}"
    # once given to the service user, the same check is ok
    for p in [tmp_path / "state", *(tmp_path / "state").rglob("*")]:
        os.chown(p, 65534, 65534)
    assert check_state_folder(make_context(cfg, user=USER)).status == "ok"  # type: ignore[union-attr]


def test_doctor_run_by_another_user_says_what_it_cannot_see_without_a_traceback() -> None:
    folder = Path(tempfile.mkdtemp(prefix="koto-doctor-"))  # not under pytest's 0700 tmp folders
    try:
        folder.chmod(0o755)
        cfg = write_config(folder)
        StateDir(folder / "state").provision()
        (folder / "state").chmod(0o700)  # the README's case: root made it, only root may enter
        done = koto_as_other_user("doctor", "--config", cfg, "--user", USER, "--json", "--timeout", "1",
                                  preload=DOCTOR_MODULES)
    finally:
        shutil.rmtree(folder)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    checks = {c["check"]: c for c in json.loads(done.stdout)["checks"]}
    state = checks["state folder"]
    assert state["status"] == "fail", state
    assert state["summary"] == (f"{folder / 'state'} (drwx------ root:root) is owned by root, not nobody: the "
                                "service cannot write its ledger and restarts in a loop")
    assert checks["ledger"]["status"] == "fail"  # it cannot look inside: said, not a traceback
    assert "permission denied" in checks["ledger"]["summary"]


def test_a_missing_group_is_named_with_the_source_that_needs_it(tmp_path: Path, pty_port: str) -> None:
    c = one(check_user_groups(make_context(write_config(tmp_path, port=pty_port), user=USER)))
    assert c.status == "fail"
    assert c.summary == f"nobody is not in group dialout (needed by source m ({pty_port}))"
    assert c.fix == "sudo usermod -aG dialout nobody && sudo systemctl restart koto"


def test_root_needs_no_group_as_its_serial_check_says(tmp_path: Path, pty_port: str) -> None:
    """`koto doctor --user root`: root opens the port whatever its group, as the serial lines say; the group check
    used to fail "root is not in group dialout" beside them."""
    c = check_user_groups(make_context(write_config(tmp_path, port=pty_port), user="root"))
    assert isinstance(c, Check) and c.status == "ok"
    assert c.summary == "root (uid 0) needs no group for its drivers: dialout"


def test_the_units_supplementary_groups_count(tmp_path: Path, pty_port: str) -> None:
    ctx = make_context(write_config(tmp_path, port=pty_port), user=USER)
    unit = tmp_path / "koto.service"
    unit.write_text("[Service]\nUser=koto\nSupplementaryGroups=gpio dialout spi\n")
    ctx.unit_files = (unit,)
    assert check_user_groups(ctx).status == "ok"  # type: ignore[union-attr]


def test_a_serial_port_nobody_can_open_is_named_with_its_mode_and_owner(tmp_path: Path, pty_port: str) -> None:
    ctx = make_context(write_config(tmp_path, port=pty_port), user=USER)
    assert [x.status for x in check_serial_ports(ctx)] == ["ok"]  # crw-rw-rw-
    os.chmod(pty_port, 0)
    c = one(check_serial_ports(ctx))
    group = c.summary.split(" ")[2].rstrip(")").split(":")[1]
    assert c.summary == f"{pty_port} (c--------- root:{group}) is not readable and writable by nobody"
    assert c.fix.startswith("give the port to the dialout group with a udev rule")  # mode 000: no group helps
    os.chmod(pty_port, 0o660)
    c = one(check_serial_ports(ctx))
    if group != "root":
        assert c.fix.startswith(f"add nobody to the port's group: sudo usermod -aG {group} nobody")
    os.chmod(pty_port, 0o666)
    assert [x.status for x in check_serial_ports(ctx)] == ["ok"]


def test_a_serial_port_that_does_not_exist(tmp_path: Path) -> None:
    c = one(check_serial_ports(make_context(write_config(tmp_path, port="/dev/ttyKOTO9"), user=USER)))
    assert c.summary == "/dev/ttyKOTO9 (appliance washer) does not exist"


def test_an_unsynchronised_clock(tmp_path: Path, mocker: pytest.MockFixture) -> None:
    """adjtimex has no peer here: the kernel's answer (TIME_ERROR, STA_UNSYNC set) is faked at the libc call."""
    from koto import clock

    class Libc:
        def adjtimex(self, tx: object) -> int:
            tx._obj.status = clock.STA_UNSYNC  # type: ignore[attr-defined]
            return clock.TIME_ERROR

    mocker.patch.object(clock.ctypes, "CDLL", return_value=Libc())
    c = check_clock(make_context(write_config(tmp_path), user=USER))
    assert (c.status, c.summary) == ("fail", "the wall clock is NOT synchronised: records carry time status U "
                                             "until it is")  # type: ignore[union-attr]
    assert c.fix.startswith("check NTP: timedatectl status")  # type: ignore[union-attr]


def cloud_table(url: str, pki_dir: Path | None = None, cn: str = "gw-doc") -> str:
    if pki_dir is None:
        return f'[cloud]\nbroker = "{url}"\n'
    return (f'[cloud]\nbroker = "{url}"\nca = "{pki_dir}/ca.pem"\ncert = "{pki_dir}/{cn}.crt"\n'
            f'key = "{pki_dir}/{cn}.key"\n')


def broker_ctx(tmp_path: Path, cloud: str) -> Context:
    ctx = make_context(write_config(tmp_path, cloud=cloud), user=USER, timeout_s=3)
    assert ctx.report.ok, ctx.report.problems
    return ctx


def test_a_closed_port_fails_at_tcp(tmp_path: Path) -> None:
    port = free_port()
    c = one(check_broker(broker_ctx(tmp_path, cloud_table(f"mqtt://127.0.0.1:{port}"))))
    assert (c.name, c.summary) == ("broker TCP", f"cannot connect to 127.0.0.1:{port}: connection refused")


def test_a_broker_that_requires_authentication_refuses(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mq", anonymous=False) as broker:
        checks = check_broker(broker_ctx(tmp_path, cloud_table(broker.url)))
    assert [c.status for c in checks] == ["ok", "ok", "fail"]
    assert checks[2].summary.startswith("the broker refused the connection: not authorised")


def test_a_good_tls_broker_passes_every_step(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    pki.client("gw-doc")
    with Mosquitto(tmp_path / "mq", pki=pki) as broker:
        checks = check_broker(broker_ctx(tmp_path, cloud_table(broker.url.replace("127.0.0.1", "localhost"),
                                                                tmp_path / "pki")))
    assert [(c.name, c.status) for c in checks] == [("broker DNS", "ok"), ("broker TCP", "ok"),
                                                     ("broker TLS", "ok"), ("broker MQTT", "ok")]


def test_a_ca_that_did_not_sign_the_broker_fails_at_tls(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    other = TestPKI(tmp_path / "other")
    other.client("gw-doc")
    with Mosquitto(tmp_path / "mq", pki=pki) as broker:
        c = one(check_broker(broker_ctx(tmp_path, cloud_table(broker.url.replace("127.0.0.1", "localhost"),
                                                               tmp_path / "other"))))
    assert c.name == "broker TLS"
    assert c.summary.startswith("the broker's certificate is not trusted: ")  # both test CAs have one name
    assert c.fix.startswith("cloud.ca must be the CA that signed the broker's certificate")


def test_an_expired_client_certificate_fails_its_expiry_check_and_the_broker_refuses_it(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    pki.client("gw-doc", valid_days=-3)
    with Mosquitto(tmp_path / "mq", pki=pki) as broker:
        ctx = broker_ctx(tmp_path, cloud_table(broker.url.replace("127.0.0.1", "localhost"), tmp_path / "pki"))
        tls = one(check_broker(ctx))
    assert tls.name == "broker TLS" and tls.summary.startswith("the broker refused our certificate")
    cert = one(check_certificates(ctx), "certificate cloud.cert")
    assert cert.status == "fail"
    assert cert.summary.startswith(f"{tmp_path / 'pki' / 'gw-doc.crt'} (CN gw-doc) EXPIRED on ")
    assert cert.summary.endswith("(3 days ago)")


def test_a_certificate_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    TestPKI(tmp_path / "pki").client("gw-doc", valid_days=10)
    ctx = broker_ctx(tmp_path, cloud_table("mqtts://localhost:8883", tmp_path / "pki"))
    c = one(check_certificates(ctx), "certificate cloud.cert")
    assert c.status == "warn" and c.summary.endswith("in 9 days")  # 9.99 days left: whole days


def test_the_command_prints_every_check_and_exits_1_on_a_fail(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, cloud=cloud_table(f"mqtt://127.0.0.1:{free_port()}"))
    assert main(["doctor", "--config", str(cfg), "--user", USER, "--runtime-dir", str(tmp_path / "run"),
                 "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    names = [ln.split()[1] for ln in out.splitlines() if ln[:4] in ("ok  ", "WARN", "FAIL", "-   ")]
    assert names[:4] == ["config", "service", "state", "GPIO"]
    assert "FAIL  broker TCP" in out.replace("  ", " ").replace("FAIL broker", "FAIL  broker")
    assert out.rstrip().splitlines()[-1].endswith("ok")


def test_a_check_that_crashes_is_a_fail_line_and_the_others_run(tmp_path: Path) -> None:
    def broken(ctx: Context) -> Check:
        raise RuntimeError("boom")

    checks = run_doctor(make_context(write_config(tmp_path), user=USER),
                        [("broken", broken), ("clock", lambda ctx: Check("clock", "ok", "fine"))])
    assert [(c.name, c.status) for c in checks] == [("broken", "fail"), ("clock", "ok")]
    assert checks[0].summary == "the check itself failed: RuntimeError: boom"


def test_mock_pins_are_a_warning_not_an_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    c = check_gpio(make_context(write_config(tmp_path), user=USER))
    assert (c.status, c.summary) == ("warn", "gpiozero uses mock pins (GPIOZERO_PIN_FACTORY=mock): nothing real "
                                             "is read")  # type: ignore[union-attr]


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is installed here (a Pi)")
def test_without_lgpio_the_fallbacks_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    c = check_gpio(make_context(write_config(tmp_path), user=USER))
    assert c.status in ("fail", "warn")  # type: ignore[union-attr]
    assert c.details[0] == "Falling back from lgpio: No module named 'lgpio'"  # type: ignore[union-attr]
    assert c.fix.startswith("install lgpio (sudo apt install python3-lgpio)")  # type: ignore[union-attr]


def test_ledger_size_rate_and_a_backlog_never_acked(tmp_path: Path) -> None:
    from metering.ledger import Ledger
    from tests.support.drafts import usage

    cfg = write_config(tmp_path, cloud=cloud_table("mqtt://127.0.0.1:1"))
    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-doc", key=sd.private_key()) as ledger:
        ledger.append([usage(i, t_end=time.time() - 60 * (10 - i)) for i in range(10)])
    ctx = make_context(cfg, user=USER, runtime_dir=tmp_path / "run")
    led = check_ledger(ctx)
    assert led.status == "ok" and "head seq 10; 10 records in the last 24 h" in led.summary
    back = check_backlog(ctx)
    assert (back.status, back.summary) == ("fail", "head seq 10, cloud acked through 0, backlog 10, last ack never "
                                                   "(from the ledger; the daemon is not running)")
    with Ledger.open(sd.ledger, gateway_id="gw-doc", key=None) as ledger:
        _seq, head_hash = ledger.head()
        ledger.mark_acked(ledger.epoch, 10, head_hash, at_wall=time.time())
    assert check_backlog(ctx).status == "ok"


def test_a_rescued_copy_or_a_lost_marker_is_reported_with_both_ways_on(tmp_path: Path) -> None:
    """What the daemon leaves when its ledger file was deleted under it stops every start: the doctor names the file
    and says how to put the copy back or start a new epoch (metering/ledger/fileguard.py)."""
    cfg = write_config(tmp_path)
    sd = StateDir(tmp_path / "state")
    sd.provision()
    ctx = make_context(cfg, user=USER, runtime_dir=tmp_path / "run")
    rescued = sd.ledger.with_name("ledger.db.rescued")
    rescued.write_bytes(b"")
    c = check_ledger(ctx)
    assert c.status == "fail" and c.summary.startswith(f"{rescued}: the ledger as it was")
    assert c.fix.startswith(f"put it back: sudo mv {rescued} {sd.ledger}")
    rescued.unlink()
    lost = sd.ledger.with_name("ledger.db.lost")
    lost.write_bytes(b"")
    c = check_ledger(ctx)
    assert c.status == "fail" and "no copy could be saved" in c.summary
    assert c.fix.endswith(f"sudo rm {lost} && sudo systemctl restart koto")


def test_while_the_daemon_runs_the_backlog_comes_from_its_status_file(tmp_path: Path) -> None:
    from gateway.status import StatusFile

    cfg = write_config(tmp_path, cloud=cloud_table("mqtt://127.0.0.1:1"))
    now = time.time()
    StatusFile(tmp_path / "run").write({"pid": os.getpid(), "written_wall": now, "ledger": {
        "head_seq": 120, "acked_through": 100, "backlog": 20, "last_ack_wall": now - 3 * 3600}})
    c = check_backlog(make_context(cfg, user=USER, runtime_dir=tmp_path / "run"))
    assert (c.status, c.summary) == ("warn", "head seq 120, cloud acked through 100, backlog 20, last ack 3.0 h ago "
                                             "(from the daemon status)")


def test_a_certificate_issued_to_another_gateway_is_named(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    other = pki.client("gw-other")
    ctx = broker_ctx(tmp_path, cloud_table("mqtts://localhost:8883", tmp_path / "pki", cn="gw-other"))
    c = one(check_certificates(ctx), "certificate CN")
    assert (c.status, c.summary) == ("fail", f"{other.cert} is issued to CN gw-other, not to this gateway's id "
                                             "'gw-doc': the broker takes the CN as the gateway's name and refuses its "
                                             "messages (ACL)")


# The deployed broker names every client by its certificate's CN (use_username_as_clientid, deploy/mosquitto): a
# doctor CONNECT with the gateway's certificate is the gateway's own session, whatever client id it sends.

def _mqtt(url: str, pki_dir: Path, cn: str) -> Any:
    from gateway.mqtt_conn import make_client
    from koto.net import parse_broker_url, tls_context

    return make_client(url=parse_broker_url(url), client_id=cn, timeout=5,
                       ssl_context=tls_context(pki_dir / "ca.pem", pki_dir / f"{cn}.crt", pki_dir / f"{cn}.key"))


async def _gateway_session_with_a_queued_command(url: str, pki_dir: Path) -> None:
    async with _mqtt(url, pki_dir, "gw-doc") as gw:  # the gateway's persistent session, then the gateway is away
        await gw.subscribe("koto/v1/gw-doc/down/cmd", qos=1)
    async with _mqtt(url, pki_dir, "koto-operator") as op:  # the cloud sends a command meanwhile: queued for it
        await op.publish("koto/v1/gw-doc/down/cmd", b'{"cmd": 1}', qos=1)


async def _what_the_gateway_gets_when_it_comes_back(url: str, pki_dir: Path) -> list[bytes]:
    got: list[bytes] = []
    async with _mqtt(url, pki_dir, "gw-doc") as gw:
        try:
            async with asyncio.timeout(3):
                async for message in gw.messages:
                    got.append(bytes(message.payload))  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return got


def test_the_mqtt_step_keeps_the_stopped_gateways_session_and_the_command_queued_in_it(tmp_path: Path) -> None:
    """A clean-session CONNECT under the gateway's certificate threw away its session: the command the cloud had
    queued for it while it was away (a crash-looping gateway is when support runs doctor) was never delivered."""
    pki = TestPKI(tmp_path / "pki")
    pki.client("gw-doc")
    pki.client("koto-operator")
    with Mosquitto(tmp_path / "mq", pki=pki) as broker:
        url = broker.url.replace("127.0.0.1", "localhost")
        asyncio.run(_gateway_session_with_a_queued_command(url, tmp_path / "pki"))
        checks = check_broker(broker_ctx(tmp_path, cloud_table(url, tmp_path / "pki")))
        got = asyncio.run(_what_the_gateway_gets_when_it_comes_back(url, tmp_path / "pki"))
    assert [(c.name, c.status) for c in checks][-1] == ("broker MQTT", "ok"), checks
    assert "session" in checks[-1].summary
    assert got == [b'{"cmd": 1}']


def test_while_the_daemon_runs_the_mqtt_step_reads_its_connection_instead_of_taking_it_over(tmp_path: Path) -> None:
    """A doctor CONNECT while the daemon runs kicked the daemon off the broker (the same client id); the daemon's
    status file says whether it is connected, so doctor reads that and connects nothing."""
    from gateway.status import StatusFile

    pki = TestPKI(tmp_path / "pki")
    pki.client("gw-doc")

    def status(connected: bool, error: str = "") -> None:
        StatusFile(tmp_path / "run").write({"pid": os.getpid(), "written_wall": time.time(), "cloud": {
            "connected": connected, "broker": "localhost", "last_error": error}})

    async def doctor_beside_a_connected_gateway(url: str) -> list[Check]:
        ctx = make_context(write_config(tmp_path, cloud=cloud_table(url, tmp_path / "pki")), user=USER,
                           runtime_dir=tmp_path / "run", timeout_s=3)
        async with _mqtt(url, tmp_path / "pki", "gw-doc") as gw:
            checks = await asyncio.to_thread(check_broker, ctx)
            await gw.publish("koto/v1/gw-doc/up/status", b"{}", qos=1)  # still connected: not taken over
        return checks

    with Mosquitto(tmp_path / "mq", pki=pki) as broker:
        url = broker.url.replace("127.0.0.1", "localhost")
        status(True)
        checks = asyncio.run(doctor_beside_a_connected_gateway(url))
        assert "already connected" not in broker.log.read_text()
        status(False, "connection refused")
        c = one(check_broker(make_context(write_config(tmp_path, cloud=cloud_table(url, tmp_path / "pki")),
                                          user=USER, runtime_dir=tmp_path / "run", timeout_s=3)), "broker MQTT")
    mqtt = checks[-1]
    assert (mqtt.name, mqtt.status) == ("broker MQTT", "ok")
    assert mqtt.summary.startswith(f"the running gateway (pid {os.getpid()}) is connected to the broker")
    assert c.summary == (f"the running gateway (pid {os.getpid()}) is NOT connected to the broker: connection "
                         "refused (its status)")
