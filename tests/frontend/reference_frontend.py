"""The reference's `CosyVoiceFrontEnd` (cosyvoice2-eu 0.2.8) as an in-test oracle, without torchaudio.

Its token and embedding extraction use only onnxruntime, whisper and torch, so they run in the
project's venv once the unused imports are stubbed: torchaudio (tests/reference does that) and
WeTextProcessing's `tn` (text normalisation only; stubbed just for the import, then removed so
no other test sees it). Golden fixtures: tests/frontend/fixtures, from
scripts/make_frontend_fixtures.py.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

from tests.reference import ref

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SIGNALS = ("sr16000", "sr22050_stereo", "sr24000", "sr44100", "sr48000")

_TN_MODULES = ("tn", "tn.chinese", "tn.english", "tn.chinese.normalizer", "tn.english.normalizer")


def load_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def frontend_module() -> types.ModuleType:
    if "cosyvoice.cli.frontend" in sys.modules:
        return sys.modules["cosyvoice.cli.frontend"]
    added = []
    for name in _TN_MODULES:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []  # type: ignore[attr-defined]
            module.Normalizer = object  # type: ignore[attr-defined]
            sys.modules[name] = module
            added.append(name)
    try:
        return ref("cosyvoice.cli.frontend")
    finally:
        for name in added:
            sys.modules.pop(name, None)


def reference_frontend(model_dir: Path, feat_extractor=None):
    """A CosyVoiceFrontEnd built as the reference builds it (its session options), minus the
    text tokenizer, which is not the audio path's business."""
    import onnxruntime
    import torch

    frontend = frontend_module()
    fe = frontend.CosyVoiceFrontEnd.__new__(frontend.CosyVoiceFrontEnd)
    option = onnxruntime.SessionOptions()
    option.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    option.intra_op_num_threads = 1
    cpu = ["CPUExecutionProvider"]
    fe.campplus_session = onnxruntime.InferenceSession(str(model_dir / "campplus.onnx"), sess_options=option, providers=cpu)
    fe.speech_tokenizer_session = onnxruntime.InferenceSession(
        str(model_dir / "speech_tokenizer_v2.onnx"), sess_options=option, providers=cpu
    )
    fe.device = torch.device("cpu")
    fe.feat_extractor = feat_extractor
    one = torch.zeros(1, 1, dtype=torch.int32)
    fe._extract_text_token = lambda text: (one, torch.tensor([1], dtype=torch.int32))
    return fe
