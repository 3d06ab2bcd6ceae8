"""Shared fixtures: paths, the tiny model directory, fresh metrics registries."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
OFFICIAL_CONFIGS = SHARED_REFERENCE / "official-configs"
TINY_YAML = ROOT / "services" / "tinymodel" / "cosyvoice2_tiny.yaml"


@pytest.fixture
def registry():
    from services.common.metrics import make_registry

    return make_registry()
