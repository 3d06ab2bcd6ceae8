"""Tiny model directories for the LLM tests: the tiny yaml plus a Qwen config.json, and an
`llm.pt` holding a reference `Qwen2LM`'s random weights in the official format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.common.modeldir.layout import QWEN_DIR, ModelDir
from services.tinymodel.qwen_config import tiny_qwen_config

TINY_YAML = Path(__file__).resolve().parents[2] / "services" / "tinymodel" / "cosyvoice2_tiny.yaml"
TEXT_VOCAB_SIZE = 300
SPEECH_TOKEN_SIZE = 6561  # the tiny yaml keeps the real codebook


def make_model_dir(root: Path, **qwen_overrides: object) -> ModelDir:
    """A model directory without weights: cosyvoice2.yaml + CosyVoice-BlankEN/config.json."""
    (root / QWEN_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_YAML, root / "cosyvoice2.yaml")
    config = {**tiny_qwen_config(TEXT_VOCAB_SIZE), **qwen_overrides}
    (root / QWEN_DIR / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return ModelDir.open(root)


def _reference_dir(tmp_path_factory: pytest.TempPathFactory, name: str, eos_boost: float):
    import torch

    from tests.reference.llm import build_reference_qwen2lm

    model_dir = make_model_dir(tmp_path_factory.mktemp(name))
    torch.manual_seed(20240611)
    model = build_reference_qwen2lm(model_dir)
    with torch.no_grad():
        # Default init gives a nearly flat speech head: the nucleus would always be the full
        # top-k and repeats would be rare. A sharper head exercises the top-p cut and the RAS
        # fallback; the optional EOS boost makes decoding stop by EOS after min_len.
        model.llm_decoder.weight.mul_(6.0)
        model.llm_decoder.bias[model.speech_token_size] += eos_boost
    torch.save(model.state_dict(), model_dir.root / "llm.pt")
    return model_dir, model


@pytest.fixture(scope="session")
def reference_setup(tmp_path_factory: pytest.TempPathFactory):
    """(model dir with llm.pt, the reference Qwen2LM those weights came from)."""
    return _reference_dir(tmp_path_factory, "llm-ref", eos_boost=0.0)


@pytest.fixture(scope="session")
def reference_setup_eos(tmp_path_factory: pytest.TempPathFactory):
    """Like reference_setup, with EOS made likely so decoding ends by a stop token."""
    return _reference_dir(tmp_path_factory, "llm-ref-eos", eos_boost=7.0)


@pytest.fixture
def new_model_dir(tmp_path: Path):
    """A factory: new_model_dir(**qwen_overrides) -> ModelDir (no llm.pt) under tmp_path."""
    counter = iter(range(1_000_000))
    return lambda **overrides: make_model_dir(tmp_path / f"dir{next(counter)}", **overrides)


@pytest.fixture(scope="session")
def tiny_lm(reference_setup):
    """Our CosyVoice2LM loaded strictly from the reference weights (float32, CPU)."""
    from services.llm.model.loader import load_llm

    model_dir, _ = reference_setup
    return load_llm(model_dir)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a shared CPU the thread-pool
    barriers cost ~10x (ms per op); restored after each test so other suites keep theirs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def reference_setup_bistream(tmp_path_factory: pytest.TempPathFactory):
    """Like reference_setup_eos with EOS +5 and FILL +6: text phases sometimes sample FILL
    (not only the forced ones) and the end-of-text tail stops by EOS after a few steps."""
    import torch

    model_dir, model = _reference_dir(tmp_path_factory, "llm-ref-bistream", eos_boost=5.0)
    with torch.no_grad():
        model.llm_decoder.bias[model.speech_token_size + 2] += 6.0
    torch.save(model.state_dict(), model_dir.root / "llm.pt")
    return model_dir, model
