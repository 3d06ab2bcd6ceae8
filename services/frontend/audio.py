"""Prompt recordings: decode the bytes a client sent, and reject what the frontend cannot use.

The reference (`cosyvoice.utils.file_utils.load_wav`) reads a file with torchaudio's soundfile
backend and averages the channels. We read with soundfile directly, which is the same
libsndfile decoder, so the samples are the ones the reference sees: for PCM_16 they are exactly
`int16 / 32768`. No torch here: the gateway can decode and validate without loading it.

Every rejection is an `InvalidRequest` whose one-line message starts with the request field's
name, so a client can tell which of its inputs was wrong. No soundfile exception escapes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile

from services.common.errors import InvalidRequest
from services.frontend.resample import resampled_length

# The tokenizer and speaker models take 16 kHz input; the reference refuses to upsample from
# less (upstream `load_wav(..., min_sr=16000)`), since the top of their band would be empty.
MIN_SAMPLE_RATE = 16000
TOKENIZER_RATE = 16000

# The reference asserts `len(speech_16k) / 16000 <= 30` before tokenizing.
MAX_PROMPT_SECONDS = 30.0

# One speech token needs 4 whisper frames of 160 samples at 16 kHz (tokens are 25 Hz, frames
# 100 Hz); the 24 kHz prompt mel then has 2 frames of 480 samples. Both are 40 ms.
MIN_TOKENIZER_SAMPLES = 4 * 160

# Silence: a peak below -80 dBFS (about 3 LSB of 16-bit PCM) carries no voice to clone. The
# whisper features of such a signal sit on their floor, so the tokens would be noise; we refuse
# it rather than produce a voice from nothing.
SILENCE_PEAK = 1e-4

DECODE_HINT = "WAV, FLAC, OGG/Opus or MP3 expected"

# The resampling kernel is (new, orig) after reducing both rates by their gcd: standard rates
# give a few hundred rows (44.1 -> 16 kHz: 441/160), an odd rate like 16001 Hz gigabytes.
MAX_REDUCED_RATE = 2000
PROMPT_RATES = (16000, 24000)  # what the prompt is resampled to (tokens and x-vector; mel)


@dataclass(frozen=True)
class DecodedAudio:
    """A mono recording as the reference sees it after loading."""

    samples: np.ndarray  # float32 mono, nominally in [-1, 1]
    sample_rate: int

    @property
    def duration(self) -> float:
        """Seconds."""
        return len(self.samples) / self.sample_rate if self.sample_rate > 0 else 0.0


def _one_line(text: str) -> str:
    """libsndfile messages sometimes span lines; a status detail must not."""
    return " ".join(str(text).split()) or "unknown error"


def _to_mono(frames: np.ndarray) -> np.ndarray:
    """(N, C) float32 → (N,) float32, the channel mean as torch computes it (sum, then divide)."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    total = frames.sum(axis=1, dtype=np.float32)
    return (total / np.float32(frames.shape[1])).astype(np.float32, copy=False)


def decode_audio(data: bytes, field: str = "prompt_audio", max_seconds: float | None = None) -> DecodedAudio:
    """Decode an audio file's bytes (any container libsndfile reads) to float32 mono. With
    `max_seconds`, a file whose header says it is longer is refused before decoding: a 32 MB
    FLAC can hold minutes of audio, gigabytes once decoded to float32."""
    if not data:
        raise InvalidRequest(f"{field}: cannot decode the audio ({DECODE_HINT}): the audio is empty")
    if max_seconds is not None:
        try:
            info = soundfile.info(io.BytesIO(data))
            seconds = info.frames / info.samplerate if 0 < info.frames < 1 << 40 and info.samplerate > 0 else 0.0
        except Exception:  # noqa: BLE001 - undecodable: the read below says so properly
            seconds = 0.0
        if seconds > max_seconds + 1.0:  # the exact limit is checked on the decoded samples
            raise InvalidRequest(f"{field}: {seconds:.1f} s is longer than the {max_seconds:g} s limit")
    try:
        # float32 is what torchaudio asks soundfile for; libsndfile scales PCM_16 by 1/32768.
        frames, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - LibsndfileError, TypeError, RuntimeError, ...
        # libsndfile's own reason ("Format not recognised."), not str(exc): that names the
        # BytesIO object by its memory address, which has no place in a client's message.
        reason = getattr(exc, "error_string", None) or type(exc).__name__
        raise InvalidRequest(f"{field}: cannot decode the audio ({DECODE_HINT}): {_one_line(str(reason))}") from None
    if frames.ndim != 2 or frames.shape[1] < 1:
        raise InvalidRequest(f"{field}: cannot decode the audio ({DECODE_HINT}): it has no channels")
    return DecodedAudio(_to_mono(frames), int(sample_rate))


def pcm16_audio(data: bytes, sample_rate: int, field: str) -> DecodedAudio:
    """Raw little-endian int16 mono PCM (the official gRPC API's prompt format, 16 kHz)."""
    if len(data) % 2:
        raise InvalidRequest(
            f"{field}: raw PCM must be 16-bit little-endian samples, but {len(data)} bytes is an odd count"
        )
    if sample_rate <= 0:
        raise InvalidRequest(f"{field}: the sample rate must be positive, got {sample_rate}")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    return DecodedAudio(samples, int(sample_rate))


def _seconds(value: float, limit: float) -> str:
    """`31.2 s`, with more digits when one decimal would round onto the limit itself."""
    text = f"{value:.1f}"
    if float(text) == limit:
        text = f"{value:.3f}"
    return f"{text} s"


def check_prompt_audio(audio: DecodedAudio, field: str = "prompt_audio", max_seconds: float = MAX_PROMPT_SECONDS) -> None:
    """Reject a recording the prompt encoder cannot use, with a message naming `field`.

    Checks, in order: the sample rate (at least 16 kHz), finite samples, the length (at most
    `max_seconds` once resampled to 16 kHz, as the reference measures it; at least one speech
    token's worth, 40 ms) and silence (peak below `SILENCE_PEAK`).
    """
    samples = audio.samples
    if samples.ndim != 1:
        raise InvalidRequest(f"{field}: expected mono samples, got an array of shape {samples.shape}")
    if audio.sample_rate < MIN_SAMPLE_RATE:
        raise InvalidRequest(
            f"{field}: {audio.sample_rate} Hz is below the minimum sample rate of {MIN_SAMPLE_RATE} Hz"
        )
    for target in PROMPT_RATES:
        g = math.gcd(int(audio.sample_rate), target)
        if max(audio.sample_rate // g, target // g) > MAX_REDUCED_RATE:
            raise InvalidRequest(
                f"{field}: {audio.sample_rate} Hz is not a supported sample rate (use a standard rate such as "
                "16000, 22050, 24000, 32000, 44100 or 48000 Hz)"
            )
    if samples.size and not np.isfinite(samples).all():
        raise InvalidRequest(f"{field}: the audio contains non-finite samples (NaN or infinity)")
    # The reference measures the limit on the 16 kHz signal, whose length is torchaudio's
    # resampled length, so a file a hair under the limit at its own rate is judged the same way.
    n16 = resampled_length(samples.size, audio.sample_rate, TOKENIZER_RATE)
    if n16 > max_seconds * TOKENIZER_RATE:
        raise InvalidRequest(
            f"{field}: {_seconds(audio.duration, max_seconds)} is longer than the {max_seconds:g} s limit"
        )
    if n16 < MIN_TOKENIZER_SAMPLES:
        minimum = MIN_TOKENIZER_SAMPLES / TOKENIZER_RATE
        raise InvalidRequest(
            f"{field}: {audio.duration:.3f} s is too short: at least {minimum:g} s is needed for one speech token"
        )
    peak = float(np.max(np.abs(samples)))
    if not peak > SILENCE_PEAK:
        raise InvalidRequest(f"{field}: the recording is silent (peak below {20 * math.log10(SILENCE_PEAK):.0f} dBFS)")
