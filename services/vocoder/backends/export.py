"""HiFT's network as a standalone graph: (mel, source_spectrum) → spectrum.

What is exported is the neural part only (`HiFTGenerator.network`): conv_pre, the upsampling
stages with their source branches and resblocks, conv_post. The f0 predictor, the sine source
(per-stream random generators), and both STFTs stay in torch: the source's noise must come from
each stream's own generator, and torch.istft has no ONNX export. The network holds nearly all
of HiFT's arithmetic (docs/backends.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.common.backends.onnx_export import export_onnx, weights_fingerprint
from services.common.modeldir.layout import HIFT_CHECKPOINT, ModelDir
from services.vocoder.model.hift import HiFTGenerator

INPUT_NAMES = ("mel", "source_spectrum")
OUTPUT_NAME = "spectrum"
EXAMPLE_FRAMES = 24


class NetworkGraph(nn.Module):
    def __init__(self, hift: HiFTGenerator) -> None:
        super().__init__()
        self.hift = hift

    def forward(self, mel: torch.Tensor, source_spectrum: torch.Tensor) -> torch.Tensor:
        return self.hift.network(mel, source_spectrum)


def spectrum_frames(hift: HiFTGenerator, mel_frames: int) -> int:
    """STFT frames of the source for `mel_frames` mel frames (center=True: one extra)."""
    return mel_frames * hift.samples_per_frame // hift.config.hop_len + 1


def example_inputs(hift: HiFTGenerator, batch: int = 1, frames: int = EXAMPLE_FRAMES) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    bins = hift.config.n_fft + 2
    return (
        torch.randn(batch, hift.config.in_channels, frames, generator=generator),
        torch.randn(batch, bins, spectrum_frames(hift, frames), generator=generator),
    )


def network_onnx_path(model_dir: ModelDir, engine_dir: Path) -> Path:
    return engine_dir / f"hift.network.{weights_fingerprint(model_dir.require(HIFT_CHECKPOINT))}.onnx"


def export_network(hift: HiFTGenerator, path: Path) -> Path:
    """Write the float32 graph with dynamic batch and time axes."""
    graph = NetworkGraph(hift).float().eval()
    axes = {"mel": {0: "batch", 2: "frames"}, "source_spectrum": {0: "batch", 2: "spectrum_frames"},
            OUTPUT_NAME: {0: "batch", 2: "spectrum_frames"}}
    # Grad mode on while tracing: the layers then take their out-of-place branches, which
    # export to a plain graph (the in-place ones only save allocations in eager mode).
    with torch.enable_grad():
        for parameter in graph.parameters():
            parameter.requires_grad_(False)
        return export_onnx(graph, example_inputs(hift), path, INPUT_NAMES, OUTPUT_NAME, axes)
