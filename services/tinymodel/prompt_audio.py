"""A sample prompt recording for the tiny model: a synthetic voice, made here, nothing downloaded.

A glottal pulse train (f0 gliding 100–150 Hz, with jitter) through three formant resonators
that move between vowel targets, shaped into syllables, plus a little breath noise. It is
not speech, but it has what the frontend's features respond to (a pitch, formants, pauses),
so the zero-shot path is exercised with realistic signal statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

PROMPT_WAV = "prompt_sample.wav"
PROMPT_TEXT_FILE = "prompt_sample.txt"
PROMPT_TRANSCRIPT = "Hello, this is a short sample of my voice."
SAMPLE_RATE = 24000
SECONDS = 3.0
# (F1, F2, F3) in Hz of the vowels the "speaker" moves through.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (300, 870, 2240), (660, 1720, 2410))


def _resonate(signal: np.ndarray, freqs: np.ndarray, bandwidth: float, rate: int) -> np.ndarray:
    """A two-pole resonator whose centre frequency follows `freqs` sample by sample."""
    radius = np.exp(-np.pi * bandwidth / rate)
    out = np.zeros_like(signal)
    y1 = y2 = 0.0
    for i, (x, f) in enumerate(zip(signal, freqs)):
        y = x + 2 * radius * np.cos(2 * np.pi * f / rate) * y1 - radius * radius * y2
        out[i] = y
        y1, y2 = y, y1
    return out * (1 - radius)


def synthesize_prompt(seed: int = 0, rate: int = SAMPLE_RATE, seconds: float = SECONDS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 125 + 25 * np.sin(2 * np.pi * 0.4 * t) + 2 * rng.standard_normal(n).cumsum() / np.sqrt(n)
    phase = np.cumsum(f0 / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    source = np.convolve(pulses, np.hanning(24), mode="same") + 0.02 * rng.standard_normal(n)
    # Vowel targets change every 0.3 s, interpolated so the formants glide.
    knots = np.arange(0, seconds + 0.3, 0.3)
    targets = np.array([_VOWELS[i % len(_VOWELS)] for i in rng.integers(0, len(_VOWELS), knots.size)])
    voice = np.zeros(n)
    for k, bandwidth in zip(range(3), (80.0, 120.0, 160.0)):
        voice += _resonate(source, np.interp(t, knots, targets[:, k]), bandwidth, rate) / (k + 1)
    syllables = np.clip(np.sin(np.pi * t / 0.3) ** 2 * 1.3, 0, 1)
    envelope = syllables * (t > 0.15) * (t < seconds - 0.2)
    wave = voice * envelope
    return (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)


def write_prompt_sample(root: Path, seed: int = 0) -> Path:
    """`prompt_sample.wav` (24 kHz, 16-bit) and its transcript beside it; returns the WAV path."""
    path = root / PROMPT_WAV
    soundfile.write(path, synthesize_prompt(seed), SAMPLE_RATE, subtype="PCM_16")
    (root / PROMPT_TEXT_FILE).write_text(PROMPT_TRANSCRIPT + "\n", encoding="utf-8")
    return path
