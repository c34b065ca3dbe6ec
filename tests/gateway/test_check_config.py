"""`koto check --config`: every problem of a file, and of the files it names, in one run, each naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigErrors
from tests.support.pki import TestPKI

GOOD = """
[gateway]
id = "gw-0001"
state_dir = "state"
timezone = "Europe/Berlin"

[cloud]
broker = "mqtts://broker.example.net:8883"
ca = "pki/ca.pem"
cert = "pki/gw-0001.crt"
key = "pki/gw-0001.key"

[tariff]
id = "home"
version = 1
currency = "EUR"
rates = [{match = "*", per_kwh = "0.32"}]

[[appliance]]
id = "washer"
profile = "washing_machine"
energy = "washer-meter"

[appliance.sources.washer-meter]
driver = "modbus"
model = "sdm120"
port = "/dev/ttyUSB0"
address = 1

[[appliance]]
id = "kettle"
profile = "kettle"

[appliance.sources.kettle-s0]
driver = "s0"
pin = 17
imp_per_kwh = 1000
"""

# Eight problems in five tables, two of them in the same table, one in a driver's own keys, one a hardware clash.
BROKEN = [
    ('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"'),
    ('broker = "mqtts://broker.example.net:8883"', 'broker = "http://x"\nwindow = 0'),
    ('per_kwh = "0.32"', "per_kwh = 0.32"),
    ('profile = "washing_machine"', 'profile = "washing_machine"\ncolour = "red"'),
    ("address = 1", "address = 1\nbaud = 7"),
    ("imp_per_kwh = 1000", "imp_per_kwh = 1000\n[appliance.relay]\npin = 17"),
    ('profile = "kettle"', 'profile = "no_such_profile"'),
]
EXPECTED_KEYS = ["gateway.timezone", "cloud.broker", "cloud.window", "tariff.rates[0].per_kwh",
                 "appliance.washer.colour", "baud", "appliance.kettle.relay.pin", "appliance.kettle.profile"]


def write(tmp_path: Path, text: str, *, pki: bool = True) -> Path:
    if pki:
        TestPKI(tmp_path / "pki").client("gw-0001")
    p = tmp_path / "koto.toml"
    p.write_text(text)
    return p


def broken(text: str = GOOD) -> str:
    for old, new in BROKEN:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_a_good_config_checks_ok_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"ok: {path}: gateway gw-0001, 2 appliance(s), 2 source(s)")
    assert "[tariff] 'home' applies at the first start" in out.err


def test_with_bootfs_the_files_named_under_etc_koto_are_read_from_beside_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/install.md: the installer checks koto.toml on the laptop before copying it to the card, where the
    config names its files under /etc/koto (first boot puts them there from the card). `--bootfs` reads them from
    beside the config; one left out is named where the Pi would look for it."""
    TestPKI(tmp_path / "pki").client("gw-0001")
    card = tmp_path / "card"
    card.mkdir()
    names = {"ca.pem": "koto-test-ca.pem", "gw-0001.crt": "koto-test-gw.crt", "gw-0001.key": "koto-test-gw.key"}
    text = GOOD
    for made, name in names.items():
        text = text.replace(f'"pki/{made}"', f'"/etc/koto/{name}"', 1)
        (card / name).write_bytes((tmp_path / "pki" / made).read_bytes())
    (card / "koto.toml").write_text(text)
    assert main(["check", "--config", str(card / "koto.toml"), "--bootfs"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {card / 'koto.toml'}: gateway gw-0001")
    (card / names["gw-0001.key"]).unlink()
    assert main(["check", "--config", str(card / "koto.toml"), "--bootfs"]) == 1
    out = capsys.readouterr().out
    assert "cloud.key" in out and f"/etc/koto/{names['gw-0001.key']}" in out and "cloud.ca" not in out


def test_with_bootfs_it_says_what_first_boot_will_switch_on_in_the_cards_boot_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A meter on the Pi's UART and an MCP3008: the installer sees on the laptop which lines first boot adds to the
    card's config.txt and that the Pi reboots once; nothing on the card is written by the check."""
    from tests.gateway.test_firstboot import PI_CMDLINE, PI_CONFIG_TXT, UART_AND_SPI

    card = tmp_path / "bootfs"
    card.mkdir()
    (card / "config.txt").write_text(PI_CONFIG_TXT)
    (card / "cmdline.txt").write_text(PI_CMDLINE)
    (card / "koto.toml").write_text(UART_AND_SPI.format(state=tmp_path / "state"))
    assert main(["check", "--config", str(card / "koto.toml"), "--bootfs"]) == 0
    err = capsys.readouterr().err
    said = "note: first boot will change the card's boot files: "
    assert f"{said}enable_uart=1 in config.txt (appliance washer, source pzem on /dev/serial0)" in err
    assert f"{said}dtparam=uart0_console in config.txt for a Pi 5" in err
    assert f"{said}dtparam=spi=on in config.txt (appliance oven, source ct (MCP3008))" in err
    assert f"{said}the kernel's console off the UART in cmdline.txt" in err
    assert "note: first boot then reboots the Pi once" in err
    assert (card / "config.txt").read_text() == PI_CONFIG_TXT and (card / "cmdline.txt").read_text() == PI_CMDLINE
    (card / "koto.toml").write_text(UART_AND_SPI.format(state=tmp_path / "state").replace("/dev/serial0",
                                                                                          "/dev/ttyUSB0"))
    (card / "config.txt").write_text(PI_CONFIG_TXT + "dtparam=spi=on\n")  # already there: nothing to say
    assert main(["check", "--config", str(card / "koto.toml"), "--bootfs"]) == 0
    assert "first boot" not in capsys.readouterr().err


def test_every_problem_is_printed_at_once_naming_file_and_key(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, broken())
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == len(EXPECTED_KEYS), lines
    for line, key in zip(lines, EXPECTED_KEYS, strict=True):
        assert line.startswith(f"{path}: "), line
        assert f"{key}: " in line, (key, line)
    assert f"{path}: 8 problems; nothing was started" in out.err
    assert not (tmp_path / "state").exists()


def test_loading_the_same_file_raises_all_problems_and_koto_run_prints_one_line_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, broken())
    with pytest.raises(ConfigErrors) as err:
        load_config(path)
    # the profile is checked by `koto check` (it names a file to read), the file's own keys by every load
    assert [e.key for e in err.value.errors] == [k for k in EXPECTED_KEYS if not k.endswith(".profile")]
    assert err.value.key == "gateway.timezone"  # code that handles one ConfigError sees the first
    assert main(["run", "--config", str(path)]) == 2
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("koto: ")]) == 7


def test_files_it_names_missing_unreadable_or_not_matching_are_named(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD + '\n')
    other = TestPKI(tmp_path / "other").client("gw-0001")
    (tmp_path / "pki" / "gw-0001.key").write_bytes(other.key.read_bytes())  # the key of another certificate
    (tmp_path / "pki" / "ca.pem").write_text("not a certificate\n")
    text = GOOD.replace('[tariff]', 'operator_keys = ["missing.pub.pem"]\n\n[tariff]')
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[1] for ln in lines] == ["cloud.ca", "cloud.key", "cloud.operator_keys[0]"]
    assert "not a PEM certificate" in lines[0]
    assert "is not the key of the certificate" in lines[1]
    assert "no such file" in lines[2]


def test_a_file_that_is_not_toml_is_one_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[gateway\nid=", pki=False)
    assert main(["check", "--config", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().out


def test_a_bad_source_is_named_once_not_again_as_a_bad_energy_source(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace('driver = "modbus"', 'driver = "modbos"').replace(
        "address = 1", 'address = 1\n\n[appliance.sources.washer-door]\ndriver = "gpio_signal"\npin = 22')
    path = write(tmp_path, text)
    assert main(["check", "--config", str(path), "--no-state"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "source 'washer-meter': driver: unknown driver 'modbos'" in lines[0]


def test_an_s0_sources_bad_imp_per_kwh_is_named_once_by_its_driver(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.replace("imp_per_kwh = 1000", "imp_per_kwh = 0"))
    assert main(["check", "--config", str(path), "--no-state"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "source 'kettle-s0': imp_per_kwh: 0 is out of range" in lines[0]


def test_a_typo_in_a_source_does_not_hide_the_problems_after_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A driver stops at its first problem; an unknown key (the commonest: a typo) no longer hides the rest of
    that source's problems from the same `koto check`."""
    path = write(tmp_path, GOOD.replace("address = 1", "adress = 1\nbaud_rate = 9600\naddress = 999"))
    assert main(["check", "--config", str(path), "--no-state"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[2] for ln in lines] == ["adress", "baud_rate", "address"], lines
    assert "unknown key" in lines[0] and "unknown key" in lines[1] and "1..247" in lines[2]
