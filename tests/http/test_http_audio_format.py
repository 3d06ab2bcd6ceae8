"""The front's encoders without a server: every format's pieces, concatenated, decode back to
the PCM that went in (lossless formats exactly), and the streamed formats hand out bytes
before the end."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from services.http.audio_format import FORMATS, STREAMED_FORMATS, StreamEncoder, encode_whole

RATE = 24000


def _pcm(seconds: float = 1.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


def _chunks(pcm: bytes, size: int = 4800) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


@pytest.mark.parametrize("response_format", FORMATS)
def test_streamed_pieces_make_one_file_of_the_format(response_format):
    pcm = _pcm(2.0)
    encoder = StreamEncoder(response_format, RATE)
    pieces = [encoder.feed(chunk) for chunk in _chunks(pcm)]
    data = b"".join(pieces) + encoder.finish()
    if response_format in STREAMED_FORMATS:
        assert sum(1 for piece in pieces if piece) >= 2  # bytes leave before the end
    else:
        assert not any(pieces)  # mp3 and flac: written whole at the end
    if response_format == "pcm":
        assert data == pcm
        return
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and decoded.size == len(pcm) // 2
    if response_format in ("wav", "flac"):
        np.testing.assert_array_equal(decoded, np.frombuffer(pcm, "<i2"))


def test_streamed_wav_says_length_unknown_and_whole_wav_says_the_length():
    pcm = _pcm(0.5)
    encoder = StreamEncoder("wav", RATE)
    streamed = encoder.feed(pcm) + encoder.finish()
    assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[40:44] == b"\xff\xff\xff\xff"
    whole = encode_whole("wav", pcm, RATE)
    assert int.from_bytes(whole[40:44], "little") == len(pcm) and whole[44:] == pcm


def test_an_empty_wav_stream_is_still_a_valid_file():
    # (libsndfile writes no mp3/flac/opus file for zero samples; the gateway never sends none.)
    data = StreamEncoder("wav", RATE).finish()
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.frames) == (RATE, 0)
