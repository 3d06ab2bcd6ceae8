"""decode_audio / pcm16_audio / check_prompt_audio: formats, and every rejection's message."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from services.common.errors import InvalidRequest
from services.frontend.audio import (
    SILENCE_PEAK,
    DecodedAudio,
    check_prompt_audio,
    decode_audio,
    pcm16_audio,
)


def tone(sample_rate: int, seconds: float, channels: int = 1, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    mono = amplitude * np.sin(2 * np.pi * 220.0 * t) * np.minimum(1.0, t / 0.01)
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono


def encode(signal: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def rejection(call) -> str:
    with pytest.raises(InvalidRequest) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_pcm16_wav_is_exactly_int16_over_32768():
    data = encode(tone(16000, 0.5), 16000)
    audio = decode_audio(data)
    raw = np.frombuffer(data[44:], dtype="<i2")  # canonical 44-byte header from libsndfile
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    np.testing.assert_array_equal(audio.samples, raw.astype(np.float32) / 32768)
    assert audio.duration == pytest.approx(0.5)


def test_stereo_is_averaged_to_mono():
    stereo = tone(24000, 0.3, channels=2)
    audio = decode_audio(encode(stereo, 24000))
    left, right = (np.round(stereo[:, c] * 32767) for c in range(2))  # libsndfile's float->int16
    expected = ((left / 32768).astype(np.float32) + (right / 32768).astype(np.float32)) / np.float32(2)
    np.testing.assert_allclose(audio.samples, expected, atol=1 / 32768)
    assert audio.samples.ndim == 1


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "tolerance"),
    [
        ("FLAC", "PCM_16", 44100, 1e-4),
        ("OGG", "VORBIS", 24000, None),
        ("OGG", "OPUS", 48000, None),
        ("MP3", "MPEG_LAYER_III", 24000, None),
    ],
)
def test_other_formats_decode(fmt, subtype, rate, tolerance):
    signal = tone(rate, 1.0)
    audio = decode_audio(encode(signal, rate, fmt, subtype))
    assert audio.sample_rate == rate
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    # Lossy codecs add or drop a few padding frames at the edges.
    assert abs(len(audio.samples) - len(signal)) < 0.1 * rate
    if tolerance is not None:
        np.testing.assert_allclose(audio.samples, signal, atol=tolerance)
    else:
        assert 0.2 < np.max(np.abs(audio.samples)) < 0.6
    check_prompt_audio(audio)


def test_pcm16_raw():
    samples = np.array([0, 1, -1, 32767, -32768], dtype="<i2")
    audio = pcm16_audio(samples.tobytes(), 16000, "prompt_pcm")
    np.testing.assert_array_equal(audio.samples, samples.astype(np.float32) / 32768)
    assert audio.sample_rate == 16000


def test_odd_length_pcm_is_rejected():
    message = rejection(lambda: pcm16_audio(b"\x00\x01\x02", 16000, "prompt_pcm"))
    assert message.startswith("prompt_pcm: raw PCM must be 16-bit little-endian samples")
    assert "3 bytes" in message


@pytest.mark.parametrize(
    "data",
    [b"this is not audio at all, just some text bytes" * 4, b"RIFF\x00\x00\x00\x00WAVEjunk", bytes(range(256))],
)
def test_garbage_is_rejected(data):
    message = rejection(lambda: decode_audio(data, field="prompt_audio"))
    assert message.startswith("prompt_audio: cannot decode the audio (WAV, FLAC, OGG/Opus or MP3 expected): ")
    assert " at 0x" not in message and "BytesIO" not in message  # libsndfile's reason, no object addresses


def test_empty_is_rejected():
    message = rejection(lambda: decode_audio(b"", field="voice.prompt_audio"))
    assert message == "voice.prompt_audio: cannot decode the audio (WAV, FLAC, OGG/Opus or MP3 expected): the audio is empty"


def test_low_sample_rate_is_rejected():
    audio = decode_audio(encode(tone(8000, 1.0), 8000))
    assert rejection(lambda: check_prompt_audio(audio)) == (
        "prompt_audio: 8000 Hz is below the minimum sample rate of 16000 Hz"
    )


def test_long_audio_is_rejected():
    audio = decode_audio(encode(tone(16000, 31.2), 16000))
    assert rejection(lambda: check_prompt_audio(audio)) == "prompt_audio: 31.2 s is longer than the 30 s limit"


def test_limit_is_measured_like_the_reference():
    exactly = DecodedAudio(np.full(30 * 16000, 0.1, dtype=np.float32), 16000)
    check_prompt_audio(exactly)  # 30 s is allowed (`<= 30`)
    over = DecodedAudio(np.full(30 * 16000 + 1, 0.1, dtype=np.float32), 16000)
    assert rejection(lambda: check_prompt_audio(over)) == (
        "prompt_audio: 30.000 s is longer than the 30 s limit"
    )
    short_limit = DecodedAudio(np.full(48000, 0.1, dtype=np.float32), 24000)
    assert rejection(lambda: check_prompt_audio(short_limit, max_seconds=1.5)) == (
        "prompt_audio: 2.0 s is longer than the 1.5 s limit"
    )


def test_too_short_is_rejected():
    audio = DecodedAudio(np.full(600, 0.1, dtype=np.float32), 16000)  # < 640 samples: no token
    message = rejection(lambda: check_prompt_audio(audio))
    assert message.startswith("prompt_audio: 0.037 s is too short")
    check_prompt_audio(DecodedAudio(np.full(640, 0.1, dtype=np.float32), 16000))


@pytest.mark.parametrize("amplitude", [0.0, SILENCE_PEAK / 2])
def test_silence_is_rejected(amplitude):
    audio = decode_audio(encode(tone(16000, 1.0, amplitude=amplitude), 16000, subtype="FLOAT"))
    message = rejection(lambda: check_prompt_audio(audio))
    assert message.startswith("prompt_audio: the recording is silent")


def test_all_zero_pcm_wav_is_silent():
    audio = decode_audio(encode(np.zeros(16000), 16000))
    assert rejection(lambda: check_prompt_audio(audio)).startswith("prompt_audio: the recording is silent")


def test_non_finite_samples_are_rejected():
    samples = np.full(16000, 0.1, dtype=np.float32)
    samples[100] = np.nan
    message = rejection(lambda: check_prompt_audio(DecodedAudio(samples, 16000)))
    assert message.startswith("prompt_audio: the audio contains non-finite samples")


def test_field_name_leads_every_message():
    audio = DecodedAudio(np.zeros(16000, dtype=np.float32), 16000)
    assert rejection(lambda: check_prompt_audio(audio, field="voices[2].audio")).startswith("voices[2].audio: ")


def test_an_odd_sample_rate_is_refused_before_any_resampling_kernel_is_built():
    audio = DecodedAudio(np.full(16001, 0.1, np.float32), 16001)
    message = rejection(lambda: check_prompt_audio(audio, field="prompt_audio"))
    assert message.startswith("prompt_audio: 16001 Hz is not a supported sample rate")


def test_a_file_longer_than_the_limit_is_refused_from_its_header():
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(16000 * 40, np.float32), 16000, format="FLAC")
    message = rejection(lambda: decode_audio(buffer.getvalue(), field="prompt_audio", max_seconds=30.0))
    assert message == "prompt_audio: 40.0 s is longer than the 30 s limit"
