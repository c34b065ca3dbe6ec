"""The suite's own guard: a test that hangs must fail by itself, not hold the whole run until CI kills it
(tests/conftest.py, docs/testing.md)."""

from __future__ import annotations

import pytest

from tests.conftest import HANG_S, hang_limit
from tests.support.slow import scaled


def test_every_test_carries_a_hang_limit(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is missing: make test installs it"
    marker = request.node.get_closest_marker("timeout")
    limit = hang_limit(request.config)
    if request.config.getoption("timeout", None) is not None:
        assert limit is None  # `--timeout N` on the command line rules
        return
    assert marker is not None and marker.args[0] == limit >= scaled(HANG_S)
