"""Features against the reference, each computed from the reference's own waveform (teacher forcing).

Golden fixtures: scripts/make_frontend_fixtures.py ran the reference's matcha mel_spectrogram,
whisper.log_mel_spectrogram and torchaudio.compliance.kaldi.fbank. A 16 kHz file is its own
16 kHz signal and a 24 kHz file its own 24 kHz signal, so those files teacher-force exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import ModelDir, ModelDirError
from services.frontend.audio import decode_audio
from services.frontend.features import (
    MelConfig,
    kaldi_fbank,
    prompt_mel,
    slaney_mel_filterbank,
    whisper_log_mel,
)
from services.frontend.resample import resample
from tests.frontend.reference_frontend import SIGNALS, load_fixture

MEL_TOLERANCE = 1e-4  # measured 3.3e-6 teacher-forced, 1.2e-5 chained through our resampler
WHISPER_TOLERANCE = 1e-4  # measured 0 (it is openai-whisper itself)
FBANK_TOLERANCE = 1e-3  # measured 2.2e-4; two correct float32 Kaldi fbanks differ by ~5e-4


def samples(name: str) -> tuple[dict, np.ndarray, int]:
    fixture = load_fixture(name)
    audio = decode_audio(fixture["wav"].tobytes())
    return fixture, audio.samples, audio.sample_rate


def test_slaney_filterbank_equals_whispers_stored_filters():
    """whisper's mel_filters.npz was made with librosa's slaney mel: ours must reproduce it."""
    import whisper.audio

    stored = np.load(os.path.join(os.path.dirname(whisper.audio.__file__), "assets", "mel_filters.npz"))
    for n_mels in (80, 128):
        np.testing.assert_array_equal(slaney_mel_filterbank(16000, 400, n_mels), stored[f"mel_{n_mels}"])


def test_filterbank_shape_and_range():
    basis = slaney_mel_filterbank(24000, 1920, 80, 0.0, 8000.0)
    assert basis.shape == (80, 961) and basis.dtype == np.float32
    assert not basis[:, 641:].any()  # nothing above fmax = 8000 Hz (bin 640)
    assert (basis.max(axis=1) > 0).all()  # no empty filter
    full = slaney_mel_filterbank(24000, 1920, 80, 0.0, None)  # CosyVoice 3: fmax = Nyquist
    assert full[:, 641:].any()


def test_prompt_mel_teacher_forced():
    fixture, speech_24k, rate = samples("sr24000")
    assert rate == 24000
    ours = prompt_mel(speech_24k)
    assert ours.shape == (speech_24k.size // 480, 80) == fixture["mel_file"].shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, fixture["mel_file"], rtol=0, atol=MEL_TOLERANCE)


@pytest.mark.parametrize("name", SIGNALS)
def test_prompt_mel_both_paths_chained(name):
    """Through our resampler (bit-exact with torchaudio's here), both 24 kHz paths."""
    fixture, x, rate = samples(name)
    upstream = prompt_mel(resample(x, rate, 24000))
    np.testing.assert_allclose(upstream, fixture["mel_file"], rtol=0, atol=MEL_TOLERANCE)
    if "mel_16k" in fixture:
        v028 = prompt_mel(resample(resample(x, rate, 16000), 16000, 24000))
        np.testing.assert_allclose(v028, fixture["mel_16k"], rtol=0, atol=MEL_TOLERANCE)


def test_whisper_log_mel_teacher_forced():
    fixture, speech_16k, rate = samples("sr16000")
    assert rate == 16000
    ours = whisper_log_mel(speech_16k)
    assert ours.shape == (128, speech_16k.size // 160) == fixture["whisper"].shape
    np.testing.assert_allclose(ours, fixture["whisper"], rtol=0, atol=WHISPER_TOLERANCE)


def test_kaldi_fbank_teacher_forced():
    fixture, speech_16k, _ = samples("sr16000")
    ours = kaldi_fbank(speech_16k, subtract_mean=False)
    assert ours.shape == fixture["fbank"].shape == (1 + (speech_16k.size - 400) // 160, 80)
    np.testing.assert_allclose(ours, fixture["fbank"], rtol=0, atol=FBANK_TOLERANCE)
    centred = kaldi_fbank(speech_16k, subtract_mean=True)
    reference = fixture["fbank"] - fixture["fbank"].mean(axis=0, keepdims=True)
    np.testing.assert_allclose(centred, reference, rtol=0, atol=FBANK_TOLERANCE)
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-5)


def test_mel_config_from_model_dir(tiny_model_dir):
    config = MelConfig.from_model_dir(ModelDir.open(tiny_model_dir))
    assert config == MelConfig(1920, 80, 24000, 480, 1920, 0.0, 8000.0, False)


def test_mel_config_reads_the_node_and_rejects_what_it_cannot_do():
    node = Tagged(
        "name",
        "matcha.utils.audio.mel_spectrogram",
        kwargs=dict(n_fft=1920, num_mels=80, sampling_rate=24000, hop_size=480, win_size=1920, fmin=0, fmax=None, center=False),
    )
    assert MelConfig.from_node(node).fmax is None  # CosyVoice 3's Nyquist
    node.kwargs["center"] = True
    with pytest.raises(ModelDirError, match="center=True"):
        MelConfig.from_node(node)
    del node.kwargs["n_fft"]
    with pytest.raises(ModelDirError, match="feat_extractor"):
        MelConfig.from_node(node)
    with pytest.raises(ModelDirError, match="mel_spectrogram"):
        MelConfig.from_node({"n_fft": 1920})
