"""Where things are in the repository, for tests that read what operators deploy (configs, units, schemas)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
