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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight model in the official layout, written once per test session."""
    from services.tinymodel.writer import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: on a shared 2-core box, two threads can make a 30 ms
    tiny-model call take seconds. Restored afterwards."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
