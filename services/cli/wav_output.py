"""Where `cosyvoice synth` puts its audio: a WAV file that appears only when the call succeeds,
or a WAV stream on stdout that a player can start on while the gateway is still talking.

Both are 16-bit mono PCM written chunk by chunk as the responses arrive. The header goes out
with the first chunk (its sample rate comes in the responses) in the streaming form, RIFF and
data sizes 0xFFFFFFFF, because the length is unknown until the stream ends; where the output
can seek (a file, `-o - > out.wav`) the real sizes are patched in at the end. libsndfile
(soundfile), ffmpeg and sox read a streaming header up to the end of the data.

A file is written under a temporary name in the target's directory and renamed over the target
only on success: a failed or interrupted call leaves no half-written WAV, and an older file at
that path stays as it was. grpc-free and torch-free: plain os calls.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import struct
import sys

from services.cli.client import CliError

STREAMING_SIZE = 0xFFFFFFFF  # "unknown length" in both RIFF size fields
HEADER_BYTES = 44
SAMPLE_BYTES = 2  # 16-bit mono


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM WAV header; `data_bytes` None (or too big for 32 bits) gives the streaming
    form with both sizes 0xFFFFFFFF."""
    if data_bytes is None or HEADER_BYTES - 8 + data_bytes >= STREAMING_SIZE:
        riff_size = data_size = STREAMING_SIZE
    else:
        riff_size, data_size = HEADER_BYTES - 8 + data_bytes, data_bytes
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * SAMPLE_BYTES, SAMPLE_BYTES, 8 * SAMPLE_BYTES)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data_size)


def _patch_offset(fd: int) -> int | None:
    """Where the header will start, if it can be rewritten in place at the end: not on a pipe
    (cannot seek), nor with O_APPEND (`>>`: Linux's pwrite appends there whatever the offset)."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return None
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


class WavOutput:
    """Audio into an open file descriptor, chunk by chunk; `finish` on success, `discard` on
    any failure (both close the descriptor)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name  # for messages: the path as the user gave it, or "stdout"
        self.sample_rate = 0
        self.data_bytes = 0
        self._header_at: int | None = None
        self._closed = False

    @property
    def audio_seconds(self) -> float:
        return self.data_bytes / SAMPLE_BYTES / self.sample_rate if self.sample_rate else 0.0

    def write(self, sample_rate: int, pcm: bytes) -> None:
        if not self.sample_rate:
            if sample_rate <= 0:
                raise CliError(f"the gateway sent audio without a sample rate ({sample_rate})")
            self.sample_rate = sample_rate
            self._header_at = _patch_offset(self.fd)
            self._write_all(wav_header(sample_rate, None))
        elif sample_rate != self.sample_rate:
            raise CliError(f"the sample rate changed mid-stream ({self.sample_rate} -> {sample_rate})")
        self._write_all(pcm)
        self.data_bytes += len(pcm)

    def _write_all(self, data: bytes) -> None:
        # os.write, not a buffered file: each chunk reaches a player at once, and a closed pipe
        # leaves nothing buffered for the interpreter to fail on again at exit.
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as error:
            raise CliError(f"cannot write {self.name}: {error.strerror or error}") from None

    def finish(self) -> None:
        if not self.sample_rate:
            raise CliError("the gateway returned no audio")
        if self._header_at is not None:
            try:
                os.pwrite(self.fd, wav_header(self.sample_rate, self.data_bytes), self._header_at)
            except OSError as error:
                raise CliError(f"cannot write {self.name}: {error.strerror or error}") from None
        self._close()

    def discard(self) -> None:
        try:
            self._close()
        except CliError:
            pass  # the call already failed; that error is the one to report

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                os.close(self.fd)
            except OSError as error:  # e.g. a full disk, reported only now (NFS)
                raise CliError(f"cannot write {self.name}: {error.strerror or error}") from None


class StdoutOutput(WavOutput):
    """`-o -`: the WAV stream on stdout. Nothing else may be written there in this mode."""

    def __init__(self) -> None:
        if sys.stdout is not None:  # None when started with stdout closed (>&-)
            sys.stdout.flush()
        try:
            fd = os.dup(1)  # closed at the end without closing the interpreter's stdout
        except OSError as error:
            raise CliError(f"cannot write stdout: {error.strerror or error}") from None
        if os.isatty(fd):
            os.close(fd)
            raise CliError("-o - writes binary audio; redirect stdout to a file or pipe it to a player, "
                           "not to a terminal")
        super().__init__(fd, "stdout")


class FileOutput(WavOutput):
    """A WAV file at `path`, written as `.NAME.XXXX.part` beside it and renamed on success."""

    def __init__(self, path: str) -> None:
        # The target of a symlink is replaced, not the link itself.
        self.target = os.path.realpath(path)
        self._temp: str | None = None
        try:
            existing = os.stat(self.target)
        except FileNotFoundError:
            existing = None
        except OSError as error:
            raise CliError(f"cannot write {path!r}: {error.strerror or error}") from None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise CliError(f"cannot write {path!r}: Is a directory")
        try:
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                # /dev/null, a FIFO: written in place; there is nothing to rename or remove.
                fd = os.open(self.target, os.O_WRONLY)
            else:
                if existing is not None and not os.access(self.target, os.W_OK):
                    raise CliError(f"cannot write {path!r}: Permission denied")
                directory, base = os.path.split(self.target)
                self._temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")
                # 0o666 less the umask, as a plain open() would give; an existing file's mode is kept.
                fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                if existing is not None:
                    os.fchmod(fd, stat.S_IMODE(existing.st_mode))
        except OSError as error:
            if self._temp is not None and os.path.exists(self._temp):
                os.unlink(self._temp)
            raise CliError(f"cannot write {path!r}: {error.strerror or error}") from None
        super().__init__(fd, repr(path))

    def finish(self) -> None:
        try:
            super().finish()
            if self._temp is not None:
                try:
                    os.replace(self._temp, self.target)
                except OSError as error:
                    raise CliError(f"cannot write {self.name}: {error.strerror or error}") from None
                self._temp = None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        super().discard()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None


def open_output(path: str) -> WavOutput:
    """`-` is stdout; anything else a file path. Opened before the request is sent, so an
    unwritable path fails without costing a synthesis."""
    return StdoutOutput() if path == "-" else FileOutput(path)
