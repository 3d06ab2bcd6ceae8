"""HiFT network backends: the exported graph on onnxruntime (CPU) equals torch within 1e-3 —
the network alone, a stream's chunks with their caches, and a served stream end to end; a bad
backend setting is a one-line error naming it; TensorRT where a GPU is present."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.backends.onnx_graph import OnnxGraph
from services.common.config import ConfigError, load_config
from services.common.metrics import make_registry
from services.common.modeldir.layout import HIFT_CHECKPOINT, ModelDir
from services.common.tensors import from_proto
from services.vocoder.backends import GraphNetwork, ensure_network_onnx, network_profile
from services.vocoder.backends.export import EXAMPLE_FRAMES, example_inputs
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.model.loader import load_hift
from services.vocoder.model.streaming import VocoderStream
from services.vocoder.server import create_app
from tests.reference.hift import TINY_YAML
from tests.stack import stage_app
from tests.vocoder.test_vocoder_service import _mels, _vocode

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, reference_hift: torch.nn.Module) -> Path:
    """The perturbed reference weights (louder than the tiny model's init) as hift.pt."""
    root = tmp_path_factory.mktemp("hift-model")
    shutil.copy(TINY_YAML, root / "cosyvoice2.yaml")
    torch.save(reference_hift.state_dict(), root / HIFT_CHECKPOINT)
    return root


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def hift(model_dir: Path) -> torch.nn.Module:
    return load_hift(ModelDir.open(model_dir))


@pytest.fixture(scope="module")
def onnx_network(hift, model_dir: Path, engine_dir: Path) -> GraphNetwork:
    path = ensure_network_onnx(hift, ModelDir.open(model_dir), engine_dir)
    return GraphNetwork("onnxruntime", OnnxGraph(path, "cpu", num_threads=1), hift)


@pytest.mark.parametrize("frames", [1, 9, EXAMPLE_FRAMES, 75])  # 75: longer than the traced example
@pytest.mark.parametrize("batch", [1, 3])
def test_network_graph_equals_torch(hift, onnx_network, frames: int, batch: int) -> None:
    inputs = example_inputs(hift, batch, frames)
    with torch.inference_mode():
        expected = hift.network(*inputs)
    actual = onnx_network(*inputs)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < TOLERANCE
    assert float(expected.abs().max()) > 0.5  # a graph that returned zeros would not pass


def _stream_audio(hift, seed: int) -> list[np.ndarray]:
    stream = VocoderStream(hift, torch.Generator().manual_seed(seed))
    mels = _mels(seed)
    return [stream.push(torch.from_numpy(m), final=i == len(mels) - 1).numpy() for i, m in enumerate(mels)]


def test_stream_chunks_with_onnxruntime_equal_torch(hift, onnx_network) -> None:
    expected = _stream_audio(hift, seed=4)
    hift.network_backend = onnx_network
    try:
        actual = _stream_audio(hift, seed=4)
    finally:
        hift.network_backend = None
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert float(np.abs(a - e).max()) < TOLERANCE
    assert max(float(np.abs(e).max()) for e in expected) > 0.05


async def _served_audio(model_dir: Path, engine_dir: Path, backend: str) -> list[np.ndarray]:
    config = VocoderServiceConfig(model_dir=model_dir, metrics_port=0, backend=backend, engine_dir=engine_dir)
    async with stage_app(create_app(config, make_registry())) as app:
        installed = app.servicer.runner.hift.network_backend
        assert (installed.name if installed else "torch") == backend
        responses = await _vocode(app.host.address, _mels(7), seed=7)
    return [from_proto(r.audio, "audio") for r in responses]


async def test_served_stream_on_onnxruntime_equals_torch(model_dir: Path, engine_dir: Path, onnx_network) -> None:
    onnx_audio = await _served_audio(model_dir, engine_dir, "onnxruntime")
    torch_audio = await _served_audio(model_dir, engine_dir, "torch")
    assert len(onnx_audio) == len(torch_audio) == 3
    for a, b in zip(onnx_audio, torch_audio):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) < TOLERANCE


def test_tensorrt_on_cpu_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(VocoderServiceConfig, ["--model-dir", str(tmp_path)], environ={"COSYVOICE_VOCODER_BACKEND": "tensorrt"})
    assert str(error.value) == (
        "--backend / COSYVOICE_VOCODER_BACKEND tensorrt needs a CUDA device: set --device / "
        "COSYVOICE_VOCODER_DEVICE to cuda (got 'cpu')"
    )


def _tensorrt_missing() -> str | None:
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU and torch sees none"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    return None


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=_tensorrt_missing() or "")
def test_tensorrt_engine_equals_torch(hift, model_dir: Path, engine_dir: Path) -> None:
    from services.common.backends.tensorrt_graph import TensorRTGraph

    hift_gpu = hift.to("cuda")
    config = VocoderServiceConfig(model_dir=model_dir, device="cuda", backend="tensorrt", engine_dir=engine_dir,
                                  trt_min_frames=1, trt_opt_frames=24, trt_max_frames=100, max_batch_size=4)
    path = ensure_network_onnx(hift_gpu, ModelDir.open(model_dir), engine_dir)
    graph = TensorRTGraph(path, engine_dir, "float32", network_profile(hift_gpu, config), 2, 1024, "cuda")
    backend = GraphNetwork("tensorrt", graph, hift_gpu)
    try:
        for frames in (1, 24, 75):
            inputs = tuple(t.cuda() for t in example_inputs(hift_gpu, 2, frames))
            with torch.inference_mode():
                expected = hift_gpu.network(*inputs)
            assert float((backend(*inputs) - expected).abs().max()) < 1e-2  # TF32 may be on in the engine
        assert backend.fallback_calls == 0
    finally:
        hift.to("cpu")
