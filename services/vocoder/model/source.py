"""The neural-source-filter excitation of CosyVoice2's HiFT: f0 → sine harmonics + noise → tanh.

Semantics are upstream's `SourceModuleHnNSF` with `SineGen2` (24 kHz, linear phase resampling).
Two things differ in *how* it is computed, never in the result:

- The phase is integrated at frame rate. Upstream upsamples f0 ×s (s = samples per frame, 480)
  by nearest neighbour, then resamples the per-sample phase increment back by 1/s with linear
  interpolation. That resampling reads samples s·t + (s−1)/2 (two equal neighbours when s is
  even), which lie inside frame t where the increment is constant, so it returns exactly the
  frame's own increment. The random initial phase upstream adds to the *first sample* is never
  read (for s ≥ 3, which the config enforces): upstream's initial phase is a no-op.
- Randomness comes from a per-request `torch.Generator` instead of the global RNG, drawn in the
  reference's order and memory layout (see `draw_source_noise`), so a generator seeded with s
  reproduces the reference after `torch.manual_seed(s)` bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from services.vocoder.model.config import HiFTConfig

GeneratorArg = torch.Generator | Sequence[torch.Generator | None] | None


@dataclass(frozen=True)
class SourceNoise:
    """The random inputs of one source-module call."""

    initial_phase: torch.Tensor  # (B, H), H = harmonics + 1; column 0 is 0 (unused, see above)
    harmonic_noise: torch.Tensor  # (B, H, N) standard normal, N = samples


def _draw_one(
    batch: int, num_samples: int, num_harmonics: int,
    generator: torch.Generator | None, device: torch.device,
) -> SourceNoise:
    draw_device = generator.device if generator is not None else device
    initial_phase = torch.rand(batch, num_harmonics, generator=generator, device=draw_device)
    initial_phase[:, 0] = 0
    # The reference calls randn_like on its (B, N, H) sine tensor, which is a transposed view of
    # a (B, H, N) buffer; randn_like keeps those strides and torch fills non-contiguous tensors
    # element by element (not with the vectorized fill), so layout decides the values.
    noise = torch.empty_strided(
        (batch, num_samples, num_harmonics), (num_harmonics * num_samples, 1, num_samples),
        device=draw_device,
    ).normal_(generator=generator)
    # The reference's source module then draws a (B, N, 1) noise branch it discards; drawing it
    # too keeps a generator shared across a request's chunks in step with the reference.
    torch.randn(batch, num_samples, 1, generator=generator, device=draw_device)
    return SourceNoise(initial_phase.to(device), noise.transpose(1, 2).to(device))


def draw_source_noise(
    batch: int, num_samples: int, num_harmonics: int,
    generator: GeneratorArg, device: torch.device,
) -> SourceNoise:
    """Draw in the reference's order: initial phases, harmonic noise, the discarded branch.

    One generator (or None: the global RNG, like the reference) draws for the whole batch at
    once; a sequence gives each item its own generator, as if each were a batch of one.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return _draw_one(batch, num_samples, num_harmonics, generator, device)
    if len(generator) != batch:
        raise ValueError(f"generator: got {len(generator)} generators for a batch of {batch}")
    items = [_draw_one(1, num_samples, num_harmonics, g, device) for g in generator]
    return SourceNoise(
        torch.cat([item.initial_phase for item in items]),
        torch.cat([item.harmonic_noise for item in items]),
    )


class SourceModuleHnNSF(nn.Module):
    """f0 per frame (B, T) → excitation (B, 1, T·s) at the output sample rate."""

    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.samples_per_frame = config.samples_per_frame
        self.num_harmonics = config.num_harmonic_channels
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def draw_noise(self, f0: torch.Tensor, generator: GeneratorArg) -> SourceNoise:
        batch, frames = f0.shape
        return draw_source_noise(
            batch, frames * self.samples_per_frame, self.num_harmonics, generator, f0.device
        )

    def harmonics(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        """The sine-plus-noise harmonics, (B, H, N), always float32: phase needs the precision."""
        f0 = f0.float()
        batch, frames = f0.shape
        scale = self.samples_per_frame
        multiples = torch.arange(1, self.num_harmonics + 1, dtype=f0.dtype, device=f0.device)
        # Per-frame phase increment in cycles, integer part dropped (it does not change phase).
        increment = (f0.unsqueeze(-1) * multiples / self.sampling_rate) % 1
        phase = torch.cumsum(increment, dim=1) * 2 * math.pi
        # Each frame's phase becomes the phase accumulated over its s samples, then is spread
        # over those samples by linear interpolation (upstream v2; v3 uses nearest).
        phase = F.interpolate(
            phase.transpose(1, 2) * scale, scale_factor=float(scale), mode="linear"
        )
        sines = (torch.sin(phase) * self.sine_amp).view(batch, self.num_harmonics, frames, scale)

        voiced = (f0 > self.voiced_threshold).float().view(batch, 1, frames, 1)
        # Unvoiced frames get noise about as loud as the sines; voiced ones only a little.
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        harmonic_noise = noise.harmonic_noise.view(batch, self.num_harmonics, frames, scale)
        excitation = sines * voiced + noise_amp * harmonic_noise
        return excitation.view(batch, self.num_harmonics, frames * scale)

    def forward(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        harmonics = self.harmonics(f0, noise).transpose(1, 2)  # (B, N, H), the reference's layout
        merged = torch.tanh(self.l_linear(harmonics.to(self.l_linear.weight.dtype)))
        return merged.transpose(1, 2)
