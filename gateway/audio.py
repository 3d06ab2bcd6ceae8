"""Audio encodings of the public API: PCM s16le, PCM f32le and WAV (streamable)."""

from __future__ import annotations

import struct

import numpy as np

from services.common.pb import tts_pb2

PCM_S16LE = tts_pb2.AUDIO_ENCODING_PCM_S16LE
PCM_F32LE = tts_pb2.AUDIO_ENCODING_PCM_F32LE
WAV = tts_pb2.AUDIO_ENCODING_WAV
ENCODINGS = (PCM_S16LE, PCM_F32LE, WAV)
_STREAMING_SIZE = 0xFFFFFFFF  # "length unknown", accepted by ffmpeg, sox and browsers


def normalize_encoding(encoding: int) -> int:
    return PCM_S16LE if encoding == tts_pb2.AUDIO_ENCODING_UNSPECIFIED else encoding


def to_s16le(samples: np.ndarray) -> bytes:
    # Clip before scaling: the reference casts without clipping, which wraps loud peaks.
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, num_samples: int | None) -> bytes:
    """RIFF header of mono 16-bit PCM; num_samples=None writes the streaming (unknown) sizes."""
    if num_samples is None:
        data_size = riff_size = _STREAMING_SIZE
    else:
        data_size = num_samples * 2
        riff_size = 36 + data_size
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


class AudioEncoder:
    """Encodes the chunks of one response; the WAV header goes in front of the first chunk."""

    def __init__(self, encoding: int, sample_rate: int, streaming: bool) -> None:
        self.encoding = normalize_encoding(encoding)
        self.sample_rate = sample_rate
        self.streaming = streaming
        self._header_sent = False

    def encode(self, samples: np.ndarray) -> bytes:
        if self.encoding == PCM_F32LE:
            return np.asarray(samples, dtype="<f4").tobytes()
        body = to_s16le(samples)
        if self.encoding == WAV and not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, None if self.streaming else len(samples)) + body
        return body
