"""Building blocks of HiFT: weight-norm markers, Snake, the dilated residual block, and the
short-time Fourier transforms at both ends of the generator.

Weight norm: the reference wraps many convolutions in `weight_norm`, which recomputes
`g · v / ‖v‖` on every forward. Our layers keep the plain effective `weight` (folded once at
load time by `services.common.modeldir.checkpoint.fold_weight_norm`) and only carry a marker,
so the loader knows which keys to fold and `official_state_dict` which to unfold.

Arithmetic is ordered like the reference's so that outputs agree bit for bit; the in-place
variants only save allocations (the residual blocks dominate the vocoder's CPU time).
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import torch
from torch import nn

_MARKER = "_stored_weight_normed"
# torch's weight_norm default: one norm per slice along dim 0 (for ConvTranspose1d that is the
# *input* channel axis, as in the reference, which never passes dim).
WEIGHT_NORM_DIM = 0
# The reference's Snake guards 1/α with this constant (cosyvoice/transformer/activation.py).
SNAKE_EPS = 1e-9

LayerT = TypeVar("LayerT", bound=nn.Module)


def stored_weight_normed(layer: LayerT) -> LayerT:
    """Mark a layer whose weight the official checkpoint stores as a weight-norm (g, v) pair."""
    setattr(layer, _MARKER, True)
    return layer


def weight_norm_prefixes(module: nn.Module) -> list[str]:
    """State-dict prefixes of every marked layer below `module`."""
    return [name for name, sub in module.named_modules() if getattr(sub, _MARKER, False)]


def init_conv_weight(conv: nn.Module, std: float = 0.01) -> None:
    """The reference's HiFiGAN init (`init_weights`): small normal weights, so a randomly
    initialised vocoder makes quiet noise instead of clipping."""
    nn.init.normal_(conv.weight, 0.0, std)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """x + sin²(αx) / α with a per-channel α on the linear scale (the reference's
    `alpha_logscale=False`, the only form HiFT uses)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(-1)
        inv_alpha = 1.0 / (alpha + SNAKE_EPS)
        if torch.is_grad_enabled():  # autograd needs the intermediate values intact
            return x + inv_alpha * torch.sin(x * alpha).pow(2)
        wave = (x * alpha).sin_()
        return wave.mul_(wave).mul_(inv_alpha).add_(x)


class ResBlock(nn.Module):
    """For each dilation: x += conv2(snake2(conv1(snake1(x)))), conv1 dilated, conv2 not."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            stored_weight_normed(
                nn.Conv1d(channels, channels, kernel_size, dilation=d,
                          padding=same_padding(kernel_size, d))
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            stored_weight_normed(
                nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size))
            )
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)
        for conv in (*self.convs1, *self.convs2):
            init_conv_weight(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()
        for snake1, conv1, snake2, conv2 in zip(
            self.activations1, self.convs1, self.activations2, self.convs2
        ):
            branch = conv2(snake2(conv1(snake1(x))))
            x = branch.add_(x) if inplace else branch + x
        return x


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def periodic_hann(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """scipy's `get_window('hann', length, fftbins=True)`, which the reference uses.

    Computed in float64 and rounded once, so the float32 window equals scipy's cast exactly.
    """
    n = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / length)).to(dtype)


class SpectralTransform:
    """STFT → (B, n_fft + 2, frames) of stacked real and imaginary parts, and the inverse from
    log-magnitude / phase-angle channels. center=True with reflect padding, like the reference."""

    def __init__(self, n_fft: int, hop_len: int) -> None:
        self.n_fft = n_fft
        self.hop_len = hop_len
        self.num_bins = n_fft // 2 + 1
        # A plain attribute, not a buffer: `module.to(bfloat16)` would round a buffer, and a
        # later `.to(float32)` could not undo it.
        self._windows: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def window(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._windows:
            self._windows[key] = periodic_hann(self.n_fft, dtype).to(device)
        return self._windows[key]

    def analyze(self, signal: torch.Tensor) -> torch.Tensor:
        """(B, N) → (B, n_fft + 2, N // hop + 1)."""
        signal = signal.to(_at_least_float32(signal.dtype))
        spectrum = torch.stft(
            signal, self.n_fft, self.hop_len, self.n_fft,
            window=self.window(signal.device, signal.dtype), return_complex=True,
        )
        parts = torch.view_as_real(spectrum)
        return torch.cat([parts[..., 0], parts[..., 1]], dim=1)

    def synthesize(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """(B, bins, frames) magnitude and phase angle → (B, (frames − 1) · hop), float32."""
        dtype = _at_least_float32(magnitude.dtype)
        magnitude = torch.clip(magnitude.to(dtype), max=1e2)  # the reference's clip, hard-coded
        phase = phase.to(dtype)
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        window = self.window(magnitude.device, dtype)
        signal = torch.istft(spectrum, self.n_fft, self.hop_len, self.n_fft, window=window)
        return signal.float()
