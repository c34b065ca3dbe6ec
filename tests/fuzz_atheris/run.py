"""Coverage-guided fuzzing (atheris, libFuzzer) of the gateway's byte parsers, beside the Hypothesis fuzz tests.

    .venv/bin/python -m tests.fuzz_atheris.run TARGET [libFuzzer options] WORKDIR tests/fuzz_corpus/TARGET

`make fuzz-atheris` runs every target for $ATHERIS_RUNS executions (100,000 by default) from its seed corpus in
tests/fuzz_corpus/TARGET (read only: libFuzzer writes what it learns into WORKDIR, the first folder). Each target
feeds raw bytes where outside bytes enter the gateway and checks the same properties as its Hypothesis test (it
reuses that test's helpers): any other exception, or a failed check, is a crash; libFuzzer then writes the input
as `crash-*` under -artifact_prefix and exits non-zero. A crash becomes a regression test (an @example or a byte
literal) in the matching tests/**/test_fuzz_*.py.

Targets: lineproto, modbus, bthome, downlink, config, profile. atheris has wheels for x86-64 Linux only; where it
does not install, this prints why and exits 0 (the Hypothesis tests still run everywhere).
"""

from __future__ import annotations

import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import atheris  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the platform
    print("atheris is not installed (x86-64 Linux wheels only); skipping the coverage-guided runs")
    sys.exit(0)

with atheris.instrument_imports(include=["drivers", "gateway", "metering", "koto", "pymodbus", "bthome_ble",
                                         "tomllib", "json"]):

    from drivers.bthome import BTHOME_UUID, BTHomeDecoder
    from drivers.errors import FrameError
    from drivers.lineproto import _PLAIN as LINE_KINDS
    from drivers.lineproto import MAX_LINE, LineParser, LineSplitter
    from drivers.modbus import _PLAIN as MODBUS_KINDS
    from drivers.serialbus import check_reply, classify_failure
    from gateway.config import parse_config
    from koto.errors import FieldError
    from metering.errors import ProfileError
    from metering.profile import parse_profile
    from tests.drivers import test_fuzz_bthome as bt
    from tests.drivers import test_fuzz_lineproto as lp
    from tests.drivers import test_fuzz_modbus as mb
    from tests.gateway import test_fuzz_config as cf
    from tests.gateway import test_fuzz_downlink as dl
    from tests.metering import test_fuzz_profiles as pf


def lineproto(data: bytes) -> None:
    """Serial bytes, cut in two where the first byte says: the same lines whole and cut; only valid values."""
    if not data:
        return
    cut = data[0] * len(data) // 256
    whole = LineSplitter().feed(data[1:])
    splitter = LineSplitter()
    chunked = splitter.feed(data[1:cut + 1]) + splitter.feed(data[cut + 1:])
    assert [lp.outcome(x) for x in chunked] == [lp.outcome(x) for x in whole]
    parser = LineParser()
    for line in [*whole, data[1:MAX_LINE + 40]]:
        try:
            got = parser.parse(line)
        except FrameError as e:
            assert e.kind in LINE_KINDS
            continue
        for spec, value in got.values:
            lp.check_value(spec.quantity, value)


def modbus(data: bytes) -> None:
    """Bytes on the wire for one block's request: registers only from a CRC-good frame for our request."""
    if len(data) < 2:
        return
    model, block = mb.BLOCKS[data[0] % len(mb.BLOCKS)]
    rmap, device_id, wire = mb.MAPS[model], data[1] % 247 + 1, data[2:]
    pdu = mb.receive([wire[:len(wire) // 2], wire[len(wire) // 2:]], device_id)  # must not raise
    if pdu is None:
        assert classify_failure(wire, device_id, rmap.function, 5 + 2 * block.count) in MODBUS_KINDS
        return
    try:
        regs = check_reply(pdu, device_id, rmap.function, block.address, block.count, rx=wire)
    except FrameError as e:
        assert e.kind in MODBUS_KINDS
        return
    assert regs in mb.good_frames(wire, device_id, rmap.function, block.count)
    mb.check_decoded(rmap, block, regs)


def bthome(data: bytes) -> None:
    """Service data into a fresh decoder, with the published vector's key when the first byte is odd."""
    if not data:
        return
    key = bt.ENC.bindkey if data[0] & 1 else None
    raw = data[1:]
    try:
        got = BTHomeDecoder(bt.ENC.address, key).decode({BTHOME_UUID: raw}, rssi=-60, t_s=100.0)
    except FrameError as e:
        assert e.kind in bt.KINDS
        return
    assert got is not None
    if key is not None:
        assert got.encrypted and bt.authentic(raw, bt.ENC.address, key)


_world: list[Any] = []


def downlink(data: bytes) -> None:
    """A payload from down/cmd: a reply always, never applied (nothing here is signed by the pinned key)."""
    if not _world:
        _world.append(dl.World(Path(tempfile.mkdtemp(prefix="koto-atheris-"))))
    w = _world[0]
    before = w.state()
    reply = w.send(data)
    assert reply["status"] != "applied" and w.state() == before


def _toml(data: bytes) -> dict[str, Any] | None:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def config(data: bytes) -> None:
    """TOML text as a config file: a config, or FieldErrors naming the file and a key."""
    doc = _toml(data)
    if doc is None:
        return
    try:
        parse_config(doc, file=cf.FILE, base=Path("/nonexistent-koto-base"))
    except FieldError as e:
        cf.check_named(e, cf.FILE)


def profile(data: bytes) -> None:
    """TOML text as a profile: a consistent profile, or a ProfileError naming the file and a key."""
    doc = _toml(data)
    if doc is None:
        return
    try:
        p = parse_profile(doc, file="p.toml")
    except ProfileError as e:
        pf.check_error(e, "p.toml")
        return
    pf.check_profile(p)


TARGETS: dict[str, Callable[[bytes], None]] = {f.__name__: f for f in (lineproto, modbus, bthome, downlink, config,
                                                                        profile)}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz_atheris.run {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
