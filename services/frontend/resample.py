"""torchaudio's default resampler, ported (the algorithm, not the code): numpy kernel, torch conv1d.

Why not soxr or scipy: CosyVoice's models were trained on features of audio resampled by
`torchaudio.transforms.Resample` with its defaults (windowed sinc, Hann window, 6 zero
crossings, rolloff 0.99). That filter is not flat: for a steady sine at 16k→24k its gain is
0.985 at 6 kHz and 0.67 at 7.9 kHz. A flat resampler (soxr) keeps those bands at full level and
moves the top bins of the prompt mel by up to about 1 nat, so we reproduce the kernel exactly.
torchaudio itself is not installable next to the torch we use.

The algorithm: reduce both rates by their gcd to `orig` and `new`. Output sample `k` of phase
`j = k mod new` is a dot product of a fixed kernel row `j` with input samples around
`(k // new) * orig`, so the whole resampling is a strided 1-D convolution with `new` output
channels and stride `orig`. The kernel is built in float64 (except one float32 column, as in
torchaudio) and applied in float32; the output keeps `ceil(N * new / orig)` samples (computed the way torchaudio computes it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# torchaudio.transforms.Resample defaults.
LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency


def _reduced(orig_sr: int, new_sr: int) -> tuple[int, int]:
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


@lru_cache(maxsize=32)
def sinc_hann_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """The (new, 2*width + orig) float32 kernel for gcd-reduced rates, and `width`.

    Row j holds the weights for output phase j. Cached and read-only: shared across threads.
    """
    base_freq = min(orig, new) * ROLLOFF  # the cutoff, in units of the reduced rates
    # Input samples needed on each side to cover LOWPASS_FILTER_WIDTH zero crossings.
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    # Input positions relative to a frame start, in units of input periods / orig.
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    # Each output phase j sits j/new of a frame later: time from output j to every input.
    # torchaudio makes this column with torch's default dtype, so -j/new is rounded to float32
    # before it meets the float64 positions; without that the kernel differs by ~1e-6 for
    # large reduced rates (441 -> 160) and the 44.1 kHz waves by 1.4e-6 instead of ~1e-7.
    phase = np.arange(0, -new, -1, dtype=np.float32)[:, None] / np.float32(new)
    t = phase.astype(np.float64) + idx
    t = t * base_freq
    t = np.clip(t, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    # Hann window over the clipped support, then the sinc; scale keeps unit DC gain.
    window = np.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (sinc * window * (base_freq / orig)).astype(np.float32)
    kernel.setflags(write=False)
    return kernel, width


def resampled_length(n: int, orig_sr: int, new_sr: int) -> int:
    """torchaudio's output length: ceil(n * new / orig), with the quotient rounded to float32
    first (it is computed as a float32 tensor), so for long inputs it can be one short of the
    exact ceiling."""
    orig, new = _reduced(orig_sr, new_sr)
    if orig == new:
        return int(n)
    return int(math.ceil(float(np.float32(new * n / orig))))


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample a mono float signal like `torchaudio.transforms.Resample(orig_sr, new_sr)`.

    Returns a new float32 array of `resampled_length(len(x), orig_sr, new_sr)` samples.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    orig, new = _reduced(orig_sr, new_sr)
    if orig == new:
        return x.astype(np.float32, copy=True)
    import torch  # late: audio.py needs only resampled_length, and the gateway has no torch

    kernel, width = sinc_hann_kernel(orig, new)
    signal = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    # Zero padding as torchaudio: `width` before, `width + orig` after, so the last partial
    # frame still gets a full window of (zero) input. torch's conv1d (a cross-correlation) is
    # the very op torchaudio runs, so its float32 summation order is the reference's too:
    # bit-identical output here, where a numpy matmul differed by ~2e-7.
    padded = torch.nn.functional.pad(signal, (width, width + orig))
    weight = torch.from_numpy(kernel.copy())[:, None, :]  # (new, 1, taps)
    with torch.inference_mode():
        out = torch.nn.functional.conv1d(padded, weight, stride=orig)  # (1, new, frames)
    # Frame f, phase j is output sample f*new + j: transposing to (frames, new) and
    # flattening interleaves the phases.
    flat = out[0].transpose(0, 1).reshape(-1).numpy()
    return flat[: resampled_length(x.shape[0], orig_sr, new_sr)].copy()
