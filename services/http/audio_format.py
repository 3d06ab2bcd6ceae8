"""Encoding the gateway's PCM (s16le mono, 24 kHz for CosyVoice 2) into what an HTTP client
asked for: wav, pcm, mp3, opus or flac, with soundfile (libsndfile).

Streamed as synthesised: pcm (raw s16le, as OpenAI's `pcm`), wav (a header whose sizes are
0xFFFFFFFF, "length unknown", then PCM) and opus (Ogg pages, written as libsndfile completes
them). mp3 and flac are written whole when the audio is complete: libsndfile writes their
headers last (FLAC's STREAMINFO sample count, MP3's Xing/LAME tag) and its own readers depend
on them, so a response streamed without them would not decode back in full (docs/http.md).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import soundfile

from gateway.audio import wav_header

ResponseFormat = Literal["wav", "pcm", "mp3", "opus", "flac"]
FORMATS: tuple[str, ...] = ("wav", "pcm", "mp3", "opus", "flac")
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "flac": "audio/flac",
}
STREAMED_FORMATS = frozenset({"wav", "pcm", "opus"})
_SOUNDFILE = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS"), "flac": ("FLAC", "PCM_16")}


def _floats(pcm_s16le: bytes) -> np.ndarray:
    return np.frombuffer(pcm_s16le, dtype="<i2").astype(np.float32) / 32768.0


def encode_whole(response_format: str, pcm_s16le: bytes, sample_rate: int) -> bytes:
    """A complete file of `response_format` holding all of `pcm_s16le`."""
    if response_format == "pcm":
        return pcm_s16le
    if response_format == "wav":
        return wav_header(sample_rate, len(pcm_s16le) // 2) + pcm_s16le
    container, subtype = _SOUNDFILE[response_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, _floats(pcm_s16le), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


class _AppendOnlySink:
    """A file object for libsndfile that hands out what has been written since the last take.
    Ogg/Opus only appends, so handed-out bytes are never rewritten."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._taken = 0

    def write(self, data: bytes) -> int:
        end = self._position + len(data)
        if end > len(self._buffer):
            self._buffer.extend(b"\0" * (end - len(self._buffer)))
        self._buffer[self._position:end] = data
        self._position = end
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._buffer)}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out = bytes(self._buffer[self._taken:])
        self._taken = len(self._buffer)
        return out


class StreamEncoder:
    """One response's encoder: `feed` each PCM chunk as it arrives and send what it returns,
    then send `finish()`. Concatenated, the pieces are one file of the format."""

    def __init__(self, response_format: str, sample_rate: int) -> None:
        self.format = response_format
        self.sample_rate = sample_rate
        self.samples = 0
        self._pending = bytearray()  # mp3/flac: the PCM until the end
        self._started = False
        self._sink: _AppendOnlySink | None = None
        self._file: soundfile.SoundFile | None = None
        if response_format == "opus":
            self._sink = _AppendOnlySink()
            container, subtype = _SOUNDFILE["opus"]
            self._file = soundfile.SoundFile(self._sink, "w", sample_rate, 1, format=container, subtype=subtype)

    @property
    def streamed(self) -> bool:
        return self.format in STREAMED_FORMATS

    def feed(self, pcm_s16le: bytes) -> bytes:
        self.samples += len(pcm_s16le) // 2
        if self.format == "pcm":
            return pcm_s16le
        if self.format == "wav":
            if self._started:
                return pcm_s16le
            self._started = True
            return wav_header(self.sample_rate, None) + pcm_s16le
        if self._file is not None and self._sink is not None:
            self._file.write(_floats(pcm_s16le))
            return self._sink.take()
        self._pending.extend(pcm_s16le)
        return b""

    def finish(self) -> bytes:
        if self.format == "wav" and not self._started:
            self._started = True
            return wav_header(self.sample_rate, 0)
        if self._file is not None and self._sink is not None:
            self._file.close()
            self._file = None
            return self._sink.take()
        if self.format in ("mp3", "flac"):
            return encode_whole(self.format, bytes(self._pending), self.sample_rate)
        return b""

    def close(self) -> None:
        """Release libsndfile's handle of an abandoned response."""
        if self._file is not None:
            self._file.close()
            self._file = None
