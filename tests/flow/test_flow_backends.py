"""Flow estimator backends: the exported graph on onnxruntime (CPU) equals torch within 1e-3 —
the estimator alone, the chunk path the runner uses, and a served stream end to end; bad
backend settings are one-line errors naming the setting; TensorRT where a GPU is present."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.backends import BackendError
from services.common.backends.onnx_graph import OnnxGraph
from services.common.config import ConfigError, load_config
from services.common.metrics import make_registry
from services.common.modeldir.layout import ModelDir
from services.common.pb import flow_pb2
from services.common.tensors import from_proto
from services.flow.api import VoicePrompt
from services.flow.backends import GraphEstimator, ensure_estimator_onnx, estimator_profile
from services.flow.backends.export import EXAMPLE_FRAMES, INPUT_NAMES, example_inputs
from services.flow.chunk_decoder import ChunkJob, decode_chunk_batch, prompt_session, speaker_session
from services.flow.config import FlowServiceConfig
from services.flow.model.loader import load_flow
from services.flow.server import create_app
from tests.conftest import ROOT
from tests.flow.test_flow_service import TOKENS, _decode, _schedule
from tests.stack import stage_app

TOLERANCE = 1e-3
FRAMES = (7, 50, EXAMPLE_FRAMES, 333)  # 333: longer than the traced example


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def flow(tiny_model_dir: Path) -> torch.nn.Module:
    return load_flow(ModelDir.open(tiny_model_dir))


@pytest.fixture(scope="module")
def onnx_estimator(flow, tiny_model_dir: Path, engine_dir: Path) -> GraphEstimator:
    path = ensure_estimator_onnx(flow.decoder.estimator, ModelDir.open(tiny_model_dir), engine_dir)
    return GraphEstimator("onnxruntime", OnnxGraph(path, "cpu", num_threads=1), flow.decoder.estimator)


@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("batch", [2, 6])
def test_estimator_graph_equals_torch(flow, onnx_estimator, frames: int, batch: int) -> None:
    # example_inputs pads the last row and marks only the first as streaming: both mask paths.
    inputs = example_inputs(flow.decoder.estimator, batch, frames)
    with torch.inference_mode():
        expected = flow.decoder.estimator(*inputs[:6], streaming=inputs[6] > 0.5)
    actual = onnx_estimator(*inputs[:6], inputs[6] > 0.5)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < TOLERANCE
    assert float(expected.abs().max()) > 0.1  # a graph that returned zeros would not pass


def _jobs() -> list[ChunkJob]:
    rng = np.random.default_rng(3)
    tokens = tuple(int(t) for t in rng.integers(0, 6561, 90))
    speaker = speaker_session(torch.from_numpy(rng.standard_normal(192).astype(np.float32)))
    prompt = prompt_session(VoicePrompt(
        prompt_tokens=rng.integers(0, 6561, 20).astype(np.int32),
        prompt_mel=(rng.standard_normal((40, 80)) - 4).astype(np.float32),
        speaker_embedding=rng.standard_normal(192).astype(np.float32),
    ), 2, 6561)
    # A streaming chunk (chunked attention) and a final one (full attention), padded together.
    return [ChunkJob(speaker, tokens[:53], 0, False), ChunkJob(prompt, tokens, 25, True)]


def test_chunk_path_with_onnxruntime_equals_torch(flow, onnx_estimator) -> None:
    jobs = _jobs()
    expected = decode_chunk_batch(flow, jobs)
    flow.decoder.backend = onnx_estimator
    try:
        actual = decode_chunk_batch(flow, jobs)
    finally:
        flow.decoder.backend = None
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected):
        assert float(np.abs(a - e).max()) < TOLERANCE


async def _served_mels(model_dir: Path, engine_dir: Path, backend: str) -> list[np.ndarray]:
    config = FlowServiceConfig(model_dir=model_dir, metrics_port=0, backend=backend, engine_dir=engine_dir)
    async with stage_app(create_app(config, make_registry())) as app:
        installed = app.servicer.runner.flow.decoder.backend
        assert (installed.name if installed else "torch") == backend
        _, messages = _schedule(TOKENS)
        responses = await _decode(app.host.address, flow_pb2.DecodeStart(speaker_id="default"), messages)
    return [from_proto(r.mel, "mel") for r in responses]


async def test_served_stream_on_onnxruntime_equals_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A fresh engine dir: the server exports the graph itself at start.
    onnx_mels = await _served_mels(tiny_model_dir, tmp_path, "onnxruntime")
    torch_mels = await _served_mels(tiny_model_dir, tmp_path, "torch")
    assert list(tmp_path.glob("flow.estimator.*.onnx"))
    assert len(onnx_mels) == len(torch_mels) > 2
    for a, b in zip(onnx_mels, torch_mels):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) < TOLERANCE


@pytest.mark.parametrize("argv, message", [
    (["--backend", "jax"], "--backend / COSYVOICE_FLOW_BACKEND must be one of torch, torch-compile, onnxruntime, "
                           "tensorrt (got 'jax')"),
    (["--backend", "tensorrt"], "--backend / COSYVOICE_FLOW_BACKEND tensorrt needs a CUDA device: set "
                                "--device / COSYVOICE_FLOW_DEVICE to cuda (got 'cpu')"),
    (["--backend", "onnxruntime", "--dtype", "bfloat16"],
     "--dtype / COSYVOICE_FLOW_DTYPE must be float32 with the onnxruntime backend (its graphs are exported in "
     "float32) (got 'bfloat16')"),
    (["--backend", "onnxruntime", "--onnx-provider", "cuda"],
     "--onnx-provider / COSYVOICE_FLOW_ONNX_PROVIDER cuda needs a CUDA device: set --device / "
     "COSYVOICE_FLOW_DEVICE to cuda (got 'cuda')"),
    (["--onnx-provider", "rocm"], "--onnx-provider / COSYVOICE_FLOW_ONNX_PROVIDER must be cpu or cuda (got 'rocm')"),
    (["--trt-min-frames", "600"], "--trt-opt-frames / COSYVOICE_FLOW_TRT_OPT_FRAMES must satisfy 1 <= "
                                  "trt_min_frames <= trt_opt_frames <= trt_max_frames (got 500)"),
])
def test_bad_backend_settings_name_the_setting(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(FlowServiceConfig, ["--model-dir", str(tmp_path), *argv], environ={})
    assert str(error.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
def test_tensorrt_without_a_gpu_is_one_line_from_the_environment(tmp_path: Path) -> None:
    environ = {"COSYVOICE_FLOW_BACKEND": "tensorrt", "COSYVOICE_FLOW_DEVICE": "cuda"}
    with pytest.raises(ConfigError) as error:
        load_config(FlowServiceConfig, ["--model-dir", str(tmp_path)], environ=environ)
    assert str(error.value) == "--backend / COSYVOICE_FLOW_BACKEND tensorrt needs a CUDA GPU, and torch sees none"


def test_serve_refuses_tensorrt_on_cpu_in_one_line(tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "serve", "flow", "--model-dir", str(tiny_model_dir),
         "--backend", "tensorrt"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "cosyvoice serve flow: --backend / COSYVOICE_FLOW_BACKEND tensorrt needs a CUDA device: set "
        "--device / COSYVOICE_FLOW_DEVICE to cuda (got 'cpu')"
    ]


def _tensorrt_missing() -> str | None:
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU and torch sees none"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    return None


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=_tensorrt_missing() or "")
def test_tensorrt_engine_equals_torch_is_cached_and_serves_threads(flow, tiny_model_dir, engine_dir) -> None:
    from services.common.backends.tensorrt_graph import TensorRTGraph

    estimator = flow.decoder.estimator.to("cuda")
    try:
        config = FlowServiceConfig(model_dir=tiny_model_dir, device="cuda", backend="tensorrt", engine_dir=engine_dir,
                                   trt_min_frames=4, trt_opt_frames=120, trt_max_frames=400, max_batch_size=4)
        path = ensure_estimator_onnx(estimator, ModelDir.open(tiny_model_dir), engine_dir)
        build = lambda: TensorRTGraph(path, engine_dir, "float32", estimator_profile(estimator, config), 2, 1024, "cuda")  # noqa: E731
        graph = build()
        built_at = graph.plan.stat().st_mtime_ns
        assert build().plan.stat().st_mtime_ns == built_at  # loaded from the cache, not rebuilt
        backend = GraphEstimator("tensorrt", graph, estimator)
        cases = [tuple(t.cuda() for t in example_inputs(estimator, 2, n)) for n in (7, 120, 333)]
        with torch.inference_mode():
            expected = [estimator(*c[:6], streaming=c[6] > 0.5) for c in cases]
        results: dict[int, torch.Tensor] = {}

        def run(index: int) -> None:
            with torch.inference_mode():
                results[index] = backend(*cases[index][:6], cases[index][6] > 0.5)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for index, want in enumerate(expected):
            assert float((results[index] - want).abs().max()) < 1e-2  # TF32 may be on inside the engine
        too_long = tuple(t.cuda() for t in example_inputs(estimator, 2, 500))
        backend(*too_long[:6], too_long[6] > 0.5)
        assert backend.fallback_calls == 1  # past trt_max_frames: torch ran it
        assert set(INPUT_NAMES) == set(graph.input_names)
    finally:
        flow.decoder.estimator.to("cpu")


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda_provider(), reason="checks the refusal without a CUDA provider; this onnxruntime has one")
def test_onnxruntime_without_the_cuda_provider_is_one_line(flow, tiny_model_dir: Path, engine_dir: Path) -> None:
    path = ensure_estimator_onnx(flow.decoder.estimator, ModelDir.open(tiny_model_dir), engine_dir)
    with pytest.raises(BackendError) as error:
        OnnxGraph(path, "cuda", device="cuda")
    assert str(error.value) == (
        "onnx_provider cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    )


def test_an_engine_dir_that_cannot_be_written_is_one_line(flow, tiny_model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BackendError) as error:
        ensure_estimator_onnx(flow.decoder.estimator, ModelDir.open(tiny_model_dir), blocker / "engines")
    assert str(error.value) == f"cannot write ONNX graphs to {blocker / 'engines'}: Not a directory"
