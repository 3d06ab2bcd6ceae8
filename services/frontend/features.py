"""The three features CosyVoice 2 computes from a prompt recording.

- `prompt_mel`: the flow's prompt features from the 24 kHz signal, the yaml's `feat_extractor`
  (Matcha's `mel_spectrogram`), reimplemented in numpy from its parameters.
- `whisper_log_mel`: the speech tokenizer's input, computed by openai-whisper itself, which is
  what the reference calls (any other STFT padding moves the edge frames by up to 1.2).
- `kaldi_fbank`: CAM++'s input, by kaldi-native-fbank, whose defaults are torchaudio's Kaldi
  defaults; two correct float32 implementations differ by up to ~5e-4 (low-energy bins after
  pre-emphasis), so parity is 1e-3, not 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import ModelDir, ModelDirError

WHISPER_N_MELS = 128  # speech_tokenizer_v2 takes 128-bin whisper features
FBANK_BINS = 80  # CAM++ input
FBANK_RATE = 16000


@dataclass(frozen=True)
class MelConfig:
    """The `feat_extractor` node of the model's yaml (Matcha `mel_spectrogram` arguments)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None: Nyquist (CosyVoice 3)
    center: bool = False

    @classmethod
    def from_node(cls, node: Any, source: str = "feat_extractor") -> "MelConfig":
        if not isinstance(node, Tagged) or not node.target.endswith("mel_spectrogram"):
            raise ModelDirError(f"{source}: expected a !name: node of matcha.utils.audio.mel_spectrogram")
        try:
            config = cls(
                n_fft=int(node["n_fft"]),
                num_mels=int(node["num_mels"]),
                sampling_rate=int(node["sampling_rate"]),
                hop_size=int(node["hop_size"]),
                win_size=int(node["win_size"]),
                fmin=float(node["fmin"]),
                fmax=None if node["fmax"] is None else float(node["fmax"]),
                center=bool(node.get("center", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{source}: missing or invalid parameter {exc}") from exc
        if config.center:
            # Matcha pads by (n_fft - hop) / 2 itself; center=True would pad again. No
            # CosyVoice model uses it, so we refuse rather than guess.
            raise ModelDirError(f"{source}: center=True is not supported (CosyVoice uses False)")
        if config.win_size > config.n_fft or config.hop_size <= 0:
            raise ModelDirError(f"{source}: win_size must be <= n_fft and hop_size positive")
        return config

    @classmethod
    def from_model_dir(cls, model_dir: ModelDir) -> "MelConfig":
        return cls.from_node(model_dir.hparam("feat_extractor"), f"{model_dir.generation.yaml_name}: feat_extractor")


# --- Slaney mel filterbank -------------------------------------------------------------------
# Written here from librosa's formulas (librosa.filters.mel with htk=False, norm="slaney"):
# librosa brings ~420 MB (numba, scikit-learn) for this one function. The same construction at
# 16 kHz / n_fft 400 reproduces whisper's stored mel_filters.npz, which the tests check.

_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + math.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return hz / _F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _F_SP * mels
    log_part = mels >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_part] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=8)
def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) float32 triangles, equal-area normalised, as librosa builds them."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))  # rounded to float32 here...
    # ...then scaled in float64 and rounded again, which is librosa's order of operations.
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=4)
def _periodic_hann(win_size: int, n_fft: int) -> np.ndarray:
    """torch.hann_window(win_size) (periodic), centred in n_fft as torch.stft pads it."""
    n = np.arange(win_size, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * math.pi * n / win_size)).astype(np.float32)
    left = (n_fft - win_size) // 2
    window = np.pad(window, (left, n_fft - win_size - left))
    window.setflags(write=False)
    return window


def prompt_mel(speech_24k: np.ndarray, config: MelConfig | None = None) -> np.ndarray:
    """The flow's prompt features: float32 [T, num_mels], T = len // hop_size.

    Matcha semantics: reflect-pad (n_fft - hop) / 2 on both sides, frame without centring,
    periodic Hann, magnitude sqrt(re² + im² + 1e-9) (not the power), Slaney mel, log(max(x, 1e-5)).
    """
    cfg = config or MelConfig()
    x = np.asarray(speech_24k, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"prompt_mel expects a 1-D signal, got shape {x.shape}")
    pad = int((cfg.n_fft - cfg.hop_size) / 2)
    if x.size <= pad:
        raise ValueError(f"prompt_mel needs more than {pad} samples for reflect padding, got {x.size}")
    padded = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (padded.size - cfg.n_fft) // cfg.hop_size
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_size][:n_frames]
    spectrum = np.fft.rfft(frames * _periodic_hann(cfg.win_size, cfg.n_fft), axis=-1)
    power = (spectrum.real.astype(np.float32) ** 2 + spectrum.imag.astype(np.float32) ** 2).astype(np.float32)
    magnitude = np.sqrt(power + np.float32(1e-9))
    basis = slaney_mel_filterbank(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
    mel = magnitude @ basis.T  # [T, num_mels]
    return np.log(np.maximum(mel, np.float32(1e-5))).astype(np.float32)


def whisper_log_mel(speech_16k: np.ndarray, n_mels: int = WHISPER_N_MELS) -> np.ndarray:
    """The speech tokenizer's input, float32 [n_mels, len // 160], by openai-whisper itself.

    The floor `max - 8` is taken over the whole input, so call it on one utterance, unbatched.
    """
    import torch
    import whisper.audio  # imported late: whisper pulls in torch and numba

    x = torch.from_numpy(np.ascontiguousarray(speech_16k, dtype=np.float32))
    with torch.inference_mode():
        features = whisper.audio.log_mel_spectrogram(x, n_mels=n_mels)
    return features.numpy().astype(np.float32, copy=False)


def _fbank_options() -> Any:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    # torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0, sample_frequency=16000):
    # knf's remaining defaults are torchaudio's (25/10 ms frames, snip_edges, DC removal,
    # pre-emphasis 0.97, povey window, 512-point FFT, power, 20 Hz..Nyquist, log, no energy).
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = float(FBANK_RATE)
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.mel_opts.num_bins = FBANK_BINS
    opts.energy_floor = 0.0  # only used with use_energy, which is off, as in the reference
    return opts


def kaldi_fbank(speech_16k: np.ndarray, *, subtract_mean: bool) -> np.ndarray:
    """Kaldi log-mel filterbank, float32 [T, 80], of a 16 kHz signal in [-1, 1] (not int16-scaled).

    `subtract_mean=True` also removes the per-utterance mean over frames, which the reference
    applies before CAM++; it is a keyword so every caller says which one it wants.
    """
    import kaldi_native_fbank as knf

    x = np.ascontiguousarray(speech_16k, dtype=np.float32)
    fbank = knf.OnlineFbank(_fbank_options())
    fbank.accept_waveform(float(FBANK_RATE), x)
    fbank.input_finished()
    count = fbank.num_frames_ready
    feats = np.empty((count, FBANK_BINS), dtype=np.float32)
    for i in range(count):
        feats[i] = fbank.get_frame(i)
    if subtract_mean and count:
        feats -= feats.mean(axis=0, keepdims=True, dtype=np.float32)
    return feats
