"""The flow estimator as a standalone graph: (x, mask, mu, t, spks, cond, streaming) → velocity.

The official `flow.decoder.estimator.fp32.onnx` has the first six inputs only and always
attends over every frame, so streaming (chunked-attention) calls could not reproduce the torch
stage with it; this export adds `streaming` (B,) float 0/1 and builds the padding and chunk
masks inside the graph, without the data-dependent shortcuts of the torch path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.common.backends.onnx_export import export_onnx, weights_fingerprint
from services.common.modeldir.layout import FLOW_CHECKPOINT, ModelDir
from services.flow.model.estimator import CausalConditionalDecoder

INPUT_NAMES = ("x", "mask", "mu", "t", "spks", "cond", "streaming")
OUTPUT_NAME = "velocity"
EXAMPLE_FRAMES = 120  # the traced example; the time axis is dynamic


class EstimatorGraph(nn.Module):
    """The estimator with the time embedding and attention mask computed from its inputs."""

    def __init__(self, estimator: CausalConditionalDecoder) -> None:
        super().__init__()
        self.estimator = estimator
        self.chunk_size = estimator.config.static_chunk_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor, streaming: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        position = torch.arange(frames, device=x.device)
        lengths = mask[:, 0].sum(dim=-1)
        key_valid = position.unsqueeze(0).to(lengths.dtype) < lengths.unsqueeze(1)  # (B, T)
        chunk_end = (torch.div(position, self.chunk_size, rounding_mode="floor") + 1) * self.chunk_size
        in_chunk = position.unsqueeze(0) < chunk_end.unsqueeze(1)  # (T, T): row sees column
        full = (streaming < 0.5).view(-1, 1, 1)
        allowed = key_valid.unsqueeze(1) & (in_chunk.unsqueeze(0) | full)  # (B, T, T)
        time_emb = self.estimator.time_embedding(t, x.dtype)
        return self.estimator.velocity(x, mask, mu, time_emb, spks, cond, allowed.unsqueeze(1))


def example_inputs(estimator: CausalConditionalDecoder, batch: int = 2,
                   frames: int = EXAMPLE_FRAMES) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    channels = estimator.config.out_channels
    mask = torch.ones(batch, 1, frames)
    mask[-1, :, frames * 3 // 4:] = 0  # a padded row, so the mask path is traced
    return (
        torch.randn(batch, channels, frames, generator=generator), mask,
        torch.randn(batch, channels, frames, generator=generator), torch.rand(batch, generator=generator),
        torch.randn(batch, channels, generator=generator), torch.randn(batch, channels, frames, generator=generator),
        torch.tensor([1.0] + [0.0] * (batch - 1)),
    )


def estimator_onnx_path(model_dir: ModelDir, engine_dir: Path) -> Path:
    return engine_dir / f"flow.estimator.{weights_fingerprint(model_dir.require(FLOW_CHECKPOINT))}.onnx"


def export_estimator(estimator: CausalConditionalDecoder, path: Path) -> Path:
    """Write the float32 graph with dynamic batch and time axes."""
    graph = EstimatorGraph(estimator).float().eval()
    axes = {name: {0: "batch", 2: "frames"} for name in ("x", "mask", "mu", "cond", OUTPUT_NAME)}
    axes.update({"t": {0: "batch"}, "spks": {0: "batch"}, "streaming": {0: "batch"}})
    with torch.no_grad():
        return export_onnx(graph, example_inputs(estimator), path, INPUT_NAMES, OUTPUT_NAME, axes)
