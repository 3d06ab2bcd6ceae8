"""Which engine computes the flow estimator's velocity, chosen by COSYVOICE_FLOW_BACKEND.

The interface is one call, the reference estimator's inputs plus per-row streaming flags:

    backend(x, mask, mu, t, spks, cond, streaming) -> velocity

x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80); streaming (B,) bool, where
B is twice the batch (classifier-free guidance). `torch` installs nothing (the CFM loop calls the
torch estimator directly, with its mask and time embedding computed once per call);
`torch-compile` compiles that estimator; `onnxruntime` and `tensorrt` run the exported graph
(services/flow/backends/export.py). The encoder and the ODE loop stay in torch.
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
from services.flow.backends.export import INPUT_NAMES, estimator_onnx_path, export_estimator
from services.flow.model.estimator import CausalConditionalDecoder

logger = logging.getLogger(__name__)


class EstimatorBackend(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                 spks: torch.Tensor, cond: torch.Tensor, streaming: torch.Tensor) -> torch.Tensor: ...


class GraphEstimator:
    """An exported graph (onnxruntime or TensorRT) behind the estimator interface. Calls a
    TensorRT profile does not cover run on the torch estimator instead (counted)."""

    def __init__(self, name: str, graph, fallback: CausalConditionalDecoder) -> None:  # noqa: ANN001
        self.name = name
        self.graph = graph
        self.fallback = fallback
        self.fallback_calls = 0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                 spks: torch.Tensor, cond: torch.Tensor, streaming: torch.Tensor) -> torch.Tensor:
        inputs = {"x": x, "mask": mask, "mu": mu, "t": t, "spks": spks, "cond": cond,
                  "streaming": streaming.to(x.device, torch.float32)}
        if not self.graph.accepts(inputs):
            self.fallback_calls += 1
            return self.fallback(x, mask, mu, t, spks, cond, streaming.bool())
        return self.graph(inputs, tuple(x.shape)).to(x.device, x.dtype)


def install_estimator_backend(flow: torch.nn.Module, config: BackendStageConfig, model_dir: ModelDir) -> str:
    """Set up config.backend on a loaded flow; returns a one-line description for the log."""
    estimator: CausalConditionalDecoder = flow.decoder.estimator
    if config.backend == "torch":
        return "torch (eager)"
    if config.backend == "torch-compile":
        # dynamic=True: one graph for every chunk length instead of a recompile per length.
        estimator.velocity = torch.compile(estimator.velocity, dynamic=True)
        return "torch.compile (inductor, dynamic shapes)"
    engine_dir = config.resolved_engine_dir()
    onnx_path = ensure_estimator_onnx(estimator, model_dir, engine_dir)
    graph, description = open_graph(config, onnx_path, engine_dir, lambda: estimator_profile(estimator, config))
    flow.decoder.backend = GraphEstimator(config.backend, graph, estimator)
    return description


def ensure_estimator_onnx(estimator: CausalConditionalDecoder, model_dir: ModelDir, engine_dir: Path) -> Path:
    """The exported graph for these weights, exported now (in float32, on the CPU) if absent."""
    path = estimator_onnx_path(model_dir, engine_dir)
    if not path.exists():
        logger.info("exporting the flow estimator to %s", path)
        export_estimator(copy.deepcopy(estimator).float().cpu(), path)
    return path


def estimator_profile(estimator: CausalConditionalDecoder, config: BackendStageConfig):  # noqa: ANN201
    from services.common.backends.tensorrt_graph import Profile

    channels = estimator.config.out_channels
    low, opt, high = config.trt_frames()
    rows = (2, 2, 2 * config.max_batch_size)  # guidance doubles the batch
    shapes = {}
    for name in INPUT_NAMES:
        if name in ("t", "streaming"):
            shapes[name] = tuple((b,) for b in rows)
        elif name == "spks":
            shapes[name] = tuple((b, channels) for b in rows)
        else:
            width = 1 if name == "mask" else channels
            shapes[name] = tuple((b, width, f) for b, f in zip(rows, (low, opt, high)))
    return Profile(shapes)
