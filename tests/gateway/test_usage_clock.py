"""`koto usage --by cycle` writes its local times with `LocalClock` (an offset per UTC hour, a name per day), which
must say exactly what `datetime.fromtimestamp` in the zone says, DST changes and odd offsets included."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.usage_detail import LocalClock, local, span

ZONES = ("UTC", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Apia",
         "Africa/Casablanca", "America/Santiago")
# Instants near the zones' transitions of 2024-2027 as well as anywhere in those years.
T_LO, T_HI = round(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000), round(
    datetime(2027, 12, 31, tzinfo=UTC).timestamp() * 1000)


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), start=st.integers(T_LO, T_HI), length=st.integers(0, 3 * 86_400_000),
       near=st.integers(-7_200_000, 7_200_000))
def test_the_clock_says_what_fromtimestamp_says(zone: str, start: int, length: int, near: int) -> None:
    tz = ZoneInfo(zone)
    clock = LocalClock(tz)
    assert clock.span(start, start + length) == span(start, start + length, tz)
    assert clock.local(start) == local(start, tz)
    # Every transition of the zone in 2024-2027, give or take two hours: the hours that hold one are exact too.
    for t in _transitions(tz):
        assert clock.span(t + near, t + near + length) == span(t + near, t + near + length, tz)


@cache
def _transitions(tz: ZoneInfo) -> list[int]:
    out, ms = [], T_LO
    before = datetime.fromtimestamp(ms / 1000, tz).utcoffset()
    while ms < T_HI:
        ms += 3_600_000
        now = datetime.fromtimestamp(ms / 1000, tz).utcoffset()
        if now != before:
            out.append(ms)
            before = now
    return out
