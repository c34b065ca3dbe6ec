"""How a record's body sits in the `records` table: its canonical bytes, or those bytes deflated (schema 3).

The body is what is hashed, signed and published, byte for byte; how the ledger stores it is its own business, as
long as reading it back gives exactly those bytes. From schema 3 the ledger stores a new record's body as a zlib
stream (RFC 1950) deflated against a preset dictionary of the text every record shares (the envelope's keys and
fixed values, the data keys of each kind): ~360 of a usage record's ~910 bytes (39 %; zlib without the
dictionary: 60 %). The SD-card reason: a 900-byte body plus
its columns does not fit a 1 KiB page, so each record took a leaf slot and one or two overflow pages of its own,
written once into the WAL and once more into the database at the checkpoint; deflated, several records share a
leaf page (docs/ledger.md, "Write budget").

Stored bodies are self-describing, so old rows never need rewriting: canonical JSON always starts with `{`
(0x7B), a zlib stream never does (its first byte is 0x78 for the 32 KiB window used here), and a zlib stream made
with a preset dictionary names it by its Adler-32 in its header. A ledger made before schema 3 keeps its rows as
they are and gets deflated rows from its first append after the upgrade. `DICTIONARY` must therefore never change:
a new dictionary goes beside it in `_DICTIONARIES` under its own Adler-32.
"""

from __future__ import annotations

import zlib

# The dictionary: text that recurs in every body, the most frequent last (deflate reaches back at most 32 KiB, and
# prefers the nearest match). It is only a hint to the compressor; any body compresses and decompresses with it.
DICTIONARY = (
    b'"event":"clock_synced","offset_ms":,"wall_ms":"event":"stop","event":"start","gateway":"","appliances":"'
    b',"sources":"","version":"0.","detail":"'
    b'"reason":"restart","reason":"reboot","reason":"max_gap","reason":"stale","kind":"gap",'
    b'"kind":"cycle","uses":1},"kind":"interim","function":"standby","kind":"function","uses":0},'
    b'{"data":{"appliance":"","boot_id":"","cost_minor":,"currency":"EUR","cycle_energy_mwh":,"cycle_id":"",'
    b'"duration_ms":,"end":"20-T:.000Z","end_mono_us":,"energy_mwh":,"entitled":"yes","entitlement_id":"",'
    b'"epoch":,"first_seq":,"function":"","kind":"","last_seq":,"peak_power_mw":,"reason":"",'
    b'"register_end_mwh":,"register_start_mwh":,"seq":,"source":"","start":"20-T:.000Z","start_mono_us":,'
    b'"tariff_id":"","tariff_version":,"timestatus":"S","uses":'
    b'"type":"io.koto.lifecycle.v1"}"type":"io.koto.clock.v1"}'
    b'},"datacontenttype":"application/json","id":"","prevhash":"","sequence":"0000000000000000","sig":"ME",'
    b'"source":"urn:koto:gw:","specversion":"1.0","subject":"urn:koto:gw:","time":"20-T:.000Z","timestatus":"S",'
    b'"type":"io.koto.usage.v1"}'
)
DICT_ID = zlib.adler32(DICTIONARY)
_DICTIONARIES = {DICT_ID: DICTIONARY}
_JSON_START = 0x7B  # "{"


class BodyError(ValueError):
    """A stored body that is neither canonical JSON nor a zlib stream this ledger can inflate."""


def pack(body: bytes) -> bytes:
    """The bytes to store for the canonical `body` (schema 3): deflated against `DICTIONARY`."""
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return c.compress(body) + c.flush()


def unpack(stored: bytes | bytearray | memoryview | str) -> bytes:
    """The canonical body a stored value holds: as it is when it is JSON (every ledger before schema 3), else
    inflated. Raises `BodyError` when it is neither (a damaged or altered row: `verify` names it)."""
    if isinstance(stored, str):
        stored = stored.encode("utf-8", "surrogateescape")
    raw = bytes(stored)
    if not raw or raw[0] == _JSON_START:
        return raw
    if len(raw) < 6 or (raw[0] << 8 | raw[1]) % 31 or raw[0] & 0x0F != zlib.DEFLATED or not raw[1] & 0x20:
        raise BodyError("body is neither JSON nor a deflated body")
    zdict = _DICTIONARIES.get(int.from_bytes(raw[2:6], "big"))
    if zdict is None:
        raise BodyError("body is deflated with a dictionary this Koto does not know")
    d = zlib.decompressobj(15, zdict)
    try:
        out = d.decompress(raw) + d.flush()
    except zlib.error as e:
        raise BodyError(f"deflated body is damaged ({e})") from e
    if not d.eof or d.unused_data:
        raise BodyError("deflated body is truncated or has bytes after its end")
    return out


def sql_body(stored: bytes | str | None) -> str | None:
    """`koto_body(body)` in SQL (registered on every ledger connection): the body as text, for `json_extract`."""
    if stored is None:
        return None
    try:
        return unpack(stored).decode("utf-8", "replace")
    except BodyError:
        return None
