"""services/cli/wav_output.py without a gateway: the streaming header parses, a file appears
only on success (an older one survives a failure), and its mode is kept."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
import soundfile

from services.cli.client import CliError
from services.cli.wav_output import HEADER_BYTES, STREAMING_SIZE, FileOutput, wav_header

PCM = (np.arange(2400) % 200 * 100 - 10000).astype("<i2").tobytes()


def test_the_streaming_header_reads_to_the_end_of_the_data():
    stream = wav_header(24000, None) + PCM
    assert struct.unpack_from("<I", stream, 4)[0] == struct.unpack_from("<I", stream, 40)[0] == STREAMING_SIZE
    audio, rate = soundfile.read(io.BytesIO(stream), dtype="int16")
    assert rate == 24000 and audio.tobytes() == PCM
    sized = wav_header(24000, len(PCM)) + PCM
    assert struct.unpack_from("<I", sized, 4)[0] == HEADER_BYTES - 8 + len(PCM)
    assert struct.unpack_from("<I", sized, 40)[0] == len(PCM)


def test_a_failed_write_leaves_the_older_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "take.wav"
    target.write_bytes(b"an earlier take")
    output = FileOutput(str(target))
    output.write(24000, PCM)  # audio has arrived, then the stream breaks
    output.discard()
    assert target.read_bytes() == b"an earlier take"
    assert [p.name for p in tmp_path.iterdir()] == ["take.wav"]


def test_success_replaces_the_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "take.wav"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    output = FileOutput(str(target))
    output.write(24000, PCM[:1000])
    output.write(24000, PCM[1000:])
    assert target.read_bytes() == b"old"  # not renamed before the end
    output.finish()
    audio, rate = soundfile.read(target, dtype="int16")
    assert rate == 24000 and audio.tobytes() == PCM
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["take.wav"]


def test_no_audio_or_a_changing_rate_is_an_error(tmp_path):
    empty = FileOutput(str(tmp_path / "empty.wav"))
    with pytest.raises(CliError, match="returned no audio"):
        empty.finish()
    changing = FileOutput(str(tmp_path / "changing.wav"))
    changing.write(24000, PCM)
    with pytest.raises(CliError, match="sample rate changed mid-stream"):
        changing.write(16000, PCM)
    changing.discard()
    assert list(tmp_path.iterdir()) == []
