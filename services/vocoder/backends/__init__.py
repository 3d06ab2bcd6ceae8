"""Which engine computes HiFT's network, chosen by COSYVOICE_VOCODER_BACKEND.

The interface is one call on HiFT's neural part (`HiFTGenerator.network`):

    backend(mel, source_spectrum) -> spectrum

mel (B, 80, T); source_spectrum and spectrum (B, n_fft + 2, T·120 + 1). `torch` installs
nothing; `torch-compile` compiles `network`; `onnxruntime` and `tensorrt` run the exported
graph (services/vocoder/backends/export.py). f0, the source and both STFTs stay in torch.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Protocol

import torch

from services.common.backends import open_graph
from services.common.backends.settings import BackendStageConfig
from services.common.modeldir.layout import ModelDir
from services.vocoder.backends.export import export_network, network_onnx_path, spectrum_frames
from services.vocoder.model.hift import HiFTGenerator

logger = logging.getLogger(__name__)


class SpectrumBackend(Protocol):
    name: str

    def __call__(self, mel: torch.Tensor, source_spectrum: torch.Tensor) -> torch.Tensor: ...


class GraphNetwork:
    """An exported graph behind the HiFT network interface; calls outside a TensorRT profile
    run on torch instead (counted)."""

    def __init__(self, name: str, graph, hift: HiFTGenerator) -> None:  # noqa: ANN001
        self.name = name
        self.graph = graph
        self.hift = hift
        self.fallback_calls = 0

    def __call__(self, mel: torch.Tensor, source_spectrum: torch.Tensor) -> torch.Tensor:
        inputs = {"mel": mel, "source_spectrum": source_spectrum}
        if not self.graph.accepts(inputs):
            self.fallback_calls += 1
            return self.hift.network(mel, source_spectrum)
        return self.graph(inputs, tuple(source_spectrum.shape)).to(mel.device, mel.dtype)


def install_network_backend(hift: HiFTGenerator, config: BackendStageConfig, model_dir: ModelDir) -> str:
    """Set up config.backend on a loaded HiFT; returns a one-line description for the log."""
    if config.backend == "torch":
        return "torch (eager)"
    if config.backend == "torch-compile":
        hift.network = torch.compile(hift.network, dynamic=True)
        return "torch.compile (inductor, dynamic shapes)"
    engine_dir = config.resolved_engine_dir()
    onnx_path = ensure_network_onnx(hift, model_dir, engine_dir)
    graph, description = open_graph(config, onnx_path, engine_dir, lambda: network_profile(hift, config))
    hift.network_backend = GraphNetwork(config.backend, graph, hift)
    return description


def ensure_network_onnx(hift: HiFTGenerator, model_dir: ModelDir, engine_dir: Path) -> Path:
    """The exported graph for these weights, exported now (in float32, on the CPU) if absent."""
    path = network_onnx_path(model_dir, engine_dir)
    if not path.exists():
        logger.info("exporting HiFT's network to %s", path)
        export_network(copy.deepcopy(hift).float().cpu(), path)
    return path


def network_profile(hift: HiFTGenerator, config: BackendStageConfig):  # noqa: ANN201
    from services.common.backends.tensorrt_graph import Profile

    frames = config.trt_frames()
    rows = (1, 1, config.max_batch_size)
    bins = hift.config.n_fft + 2
    return Profile({
        "mel": tuple((b, hift.config.in_channels, f) for b, f in zip(rows, frames)),
        "source_spectrum": tuple((b, bins, spectrum_frames(hift, f)) for b, f in zip(rows, frames)),
    })
