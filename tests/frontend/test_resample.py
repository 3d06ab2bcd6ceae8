"""The resampler against torchaudio's (golden fixtures from scripts/make_frontend_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.frontend.audio import decode_audio
from services.frontend.features import prompt_mel
from services.frontend.resample import resample, resampled_length, sinc_hann_kernel
from tests.frontend.reference_frontend import SIGNALS, load_fixture

WAVE_TOLERANCE = 1e-6  # measured: 0 (torch conv1d, same op as torchaudio); numpy matmul gave 2.4e-7


def file_audio(name: str):
    fixture = load_fixture(name)
    return fixture, decode_audio(fixture["wav"].tobytes())


def assert_matches_excerpts(ours: np.ndarray, fixture: dict, key: str) -> None:
    head, tail = fixture[f"{key}_head"], fixture[f"{key}_tail"]
    # The tail is the reference's last samples: matching it also proves the output length.
    np.testing.assert_allclose(ours[: head.size], head, rtol=0, atol=WAVE_TOLERANCE)
    np.testing.assert_allclose(ours[-tail.size :], tail, rtol=0, atol=WAVE_TOLERANCE)


@pytest.mark.parametrize("name", SIGNALS)
def test_file_to_16k_and_24k_match_torchaudio(name):
    fixture, audio = file_audio(name)
    for key, rate in (("speech_16k", 16000), ("speech_24k", 24000)):
        ours = resample(audio.samples, audio.sample_rate, rate)
        assert ours.dtype == np.float32
        assert ours.size == resampled_length(audio.samples.size, audio.sample_rate, rate)
        if audio.sample_rate == rate:
            np.testing.assert_array_equal(ours, audio.samples)  # torchaudio skips equal rates
        else:
            assert_matches_excerpts(ours, fixture, key)


def test_16k_to_24k_matches_torchaudio():
    # A 16 kHz file's 24 kHz signal is Resample(16000, 24000): the 0.2.8 prompt path's step.
    fixture, audio = file_audio("sr16000")
    assert_matches_excerpts(resample(audio.samples, 16000, 24000), fixture, "speech_24k")


def test_length_is_torchaudios_float32_ceiling():
    assert resampled_length(16000, 16000, 24000) == 24000
    assert resampled_length(22050, 22050, 16000) == 16000
    assert resampled_length(1001, 48000, 16000) == 334  # ceil(1001 / 3)
    # torchaudio computes ceil(new * n / orig) on a float32 tensor: measured with torchaudio
    # 2.9.1, 1323328 samples at 44.1 kHz give 480119 at 16 kHz, not the exact ceiling 480120.
    assert resampled_length(1323328, 44100, 16000) == 480119
    assert resample(np.zeros(1323328, dtype=np.float32), 44100, 16000).size == 480119


def test_kernel_shape_and_dc_gain():
    kernel, width = sinc_hann_kernel(3, 2)  # 24 kHz -> 16 kHz, gcd-reduced
    assert kernel.dtype == np.float32 and kernel.shape == (2, 2 * width + 3)
    assert width == 10  # ceil(6 * 3 / (2 * 0.99))
    # Each phase sums to ~1 over its input span: a constant stays (nearly) constant.
    out = resample(np.full(4800, 0.5, dtype=np.float32), 24000, 16000)
    np.testing.assert_allclose(out[100:-100], 0.5, atol=2e-3)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        resample(np.zeros((2, 100), dtype=np.float32), 24000, 16000)
    with pytest.raises(ValueError):
        resample(np.zeros(100, dtype=np.float32), 0, 16000)


def flat_resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """An ideal band-limited resampler (flat to Nyquist), standing in for soxr/scipy."""
    n = x.size
    m = resampled_length(n, orig_sr, new_sr)
    spectrum = np.fft.rfft(x.astype(np.float64))
    out = np.zeros(m // 2 + 1, dtype=complex)
    keep = min(spectrum.size, out.size)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, m) * m / n).astype(np.float32)


@pytest.mark.parametrize("name", ["sr16000", "sr44100"])
def test_a_flat_resampler_would_fail(name):
    """Why we port torchaudio's kernel: its gain falls off above ~6 kHz, a flat filter's does
    not, and the prompt mel's top bins move by ~0.6 nat (soxr: up to ~1 nat) while the bins
    below 4 kHz agree to 1e-3."""
    fixture, audio = file_audio(name)
    speech_16k = resample(audio.samples, audio.sample_rate, 16000)
    ours = prompt_mel(resample(speech_16k, 16000, 24000))
    flat = prompt_mel(flat_resample(speech_16k, 16000, 24000))
    reference = fixture["mel_file"] if name == "sr16000" else fixture["mel_16k"]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    difference = np.abs(flat - reference)
    assert difference.max() > 0.3  # measured 0.57 (sr16000) / 0.57 (sr44100)
    assert difference[:, :40].max() < 5e-3  # the low half (below ~1.7 kHz) hardly moves: 8e-4
