"""Pipeline fixtures: the in-process library on the session's tiny model directory (one torch
thread per test comes from the root conftest's `_one_torch_thread`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pipeline(tiny_model_dir: Path):
    from services.pipeline.library import CosyVoicePipeline

    return CosyVoicePipeline.from_model_dir(tiny_model_dir)

