"""Fixtures shared by the gateway tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A real pty that anyone may open (crw-rw-rw-), standing for a serial port."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.chmod(name, 0o666)
    try:
        yield name
    finally:
        os.close(master)
        os.close(slave)
