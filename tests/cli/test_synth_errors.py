"""`cosyvoice synth` failing for real: every error case against a live `cosyvoice up` stack
(five processes, port 0) prints one stderr line, exits non-zero, and leaves no new file and
any older file at the -o path as it was. Also text from stdin and the WAV stream on stdout.

The mid-stream cases read the WAV stream from synth's stdout: the first bytes there are the
event that says audio is flowing, so the gateway is killed (or synth interrupted) mid-stream
without guessing a delay."""

from __future__ import annotations

import concurrent.futures
import io
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import soundfile

from services.cli.up import wait_serving
from services.cli.wav_output import HEADER_BYTES, STREAMING_SIZE
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a whole stack as processes, and a synthesis per audio case
TEXT = "Hi there."
LONG = "This text is long, on purpose. It has three sentences. So the stream runs for many seconds."
_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend) (\S+:\d+) \(metrics \S+:\d+\)")


def cosyvoice(*args: str, stdin: bytes = b"", **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, input=stdin,
                          capture_output="stdout" not in popen, timeout=300, **popen)


def start_synth(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.cli.main", "synth", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def stack(tiny_model_dir) -> Iterator[dict[str, str]]:
    """`cosyvoice up` on free ports; the address of each service by name."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(tiny_model_dir), "--port", "0",
         "--metrics-port", "0", "--speaker-db", ":memory:"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    addresses: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        if match := _LINE.match(line):
            addresses[match.group(1)] = match.group(2)
        if line.startswith("ready"):
            break
    assert len(addresses) == 5, "cosyvoice up did not start"
    yield addresses
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


def assert_one_line(run: subprocess.CompletedProcess | tuple[int, bytes], line: str) -> None:
    code, err = (run.returncode, run.stderr) if isinstance(run, subprocess.CompletedProcess) else run
    assert code == 1, (code, err)
    assert err.decode().splitlines() == [line]


def test_errors_before_audio_leave_no_file_and_keep_an_older_one(stack, tmp_path):
    at = ("--address", stack["gateway"])
    old = tmp_path / "old.wav"
    old.write_bytes(b"an earlier take")
    (tmp_path / "dir").mkdir()
    (tmp_path / "plain").write_text("a file, not a directory")
    cases = [  # (synth arguments, stdin, the one stderr line)
        ((TEXT, "--address", "127.0.0.1:1"), b"", "UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1"),
        ((TEXT, "--speaker", "nobody", *at), b"", "NOT_FOUND: --speaker: 'nobody' is not a registered or preset speaker"),
        (("", *at), b"", "INVALID_ARGUMENT: text: must not be empty"),
        ((" \t\n ", *at), b"", "INVALID_ARGUMENT: text: must not be empty"),
        ((TEXT, "--mode", "instruct2", *at), b"",
         "INVALID_ARGUMENT: --instruct: instruct2 needs an instruction, e.g. 'Speak slowly.'"),
        (("-", *at), b" \n", "no text on stdin (TEXT is -)"),
        (("-", *at), b"\xff\xfe", "the text on stdin is not UTF-8 (invalid start byte at byte 0)"),
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        fresh = list(pool.map(lambda case: cosyvoice("synth", *case[0], "-o", str(tmp_path / "new.wav"),
                                                       stdin=case[1]), cases))
        over_old = list(pool.map(lambda case: cosyvoice("synth", *case[0], "-o", str(old), stdin=case[1]), cases))
        to_stdout = list(pool.map(lambda case: cosyvoice("synth", *case[0], "-o", "-", stdin=case[1]), cases))
    for (_, _, line), first, second, piped in zip(cases, fresh, over_old, to_stdout):
        assert_one_line(first, f"cosyvoice synth: {line}")
        assert_one_line(second, f"cosyvoice synth: {line}")
        assert_one_line(piped, f"cosyvoice synth: {line}")
        assert piped.stdout == b""  # no header before the first audio: a player gets nothing, not a stub
    unwritable = [
        (str(tmp_path / "dir"), "Is a directory"),
        (str(tmp_path / "missing" / "out.wav"), "No such file or directory"),
        (str(tmp_path / "plain" / "out.wav"), "Not a directory"),
    ]
    for path, reason in unwritable:  # checked before the request is sent
        assert_one_line(cosyvoice("synth", TEXT, "-o", path, *at), f"cosyvoice synth: cannot write {path!r}: {reason}")
    assert old.read_bytes() == b"an earlier take"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "old.wav", "plain"]  # no .part left
    assert list((tmp_path / "dir").iterdir()) == []


def test_text_from_stdin_and_a_wav_stream_on_stdout(stack, tmp_path):
    at = ("--address", stack["gateway"], "--seed", "7")
    piped = cosyvoice("synth", "-", "-o", "-", *at, stdin="Hello from stdin.\n".encode())
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.decode().startswith("wrote stdout: ")  # the report goes to stderr: stdout is audio
    # A pipe cannot seek: the header keeps the streaming sizes, which soundfile reads to the end.
    riff_size, data_size = struct.unpack_from("<I", piped.stdout, 4)[0], struct.unpack_from("<I", piped.stdout, 40)[0]
    assert riff_size == data_size == STREAMING_SIZE
    audio, rate = soundfile.read(io.BytesIO(piped.stdout), dtype="int16")
    assert rate == 24000 and len(audio) == (len(piped.stdout) - HEADER_BYTES) // 2 > 0

    # Redirected to a file, stdout can seek: the real sizes are patched in, as in -o FILE.
    redirected = tmp_path / "redirected.wav"
    with open(redirected, "wb") as out:
        run = cosyvoice("synth", "-", "-o", "-", *at, stdin="Hello from stdin.\n".encode(), stdout=out,
                        stderr=subprocess.PIPE)
    assert run.returncode == 0, run.stderr
    data = redirected.read_bytes()
    assert struct.unpack_from("<I", data, 40)[0] == len(data) - HEADER_BYTES
    assert data[HEADER_BYTES:] == piped.stdout[HEADER_BYTES:]  # same seed, same text from stdin, same audio

    # -o FILE: same bytes as the patched stream, and the file's name only appears once complete.
    as_file = tmp_path / "file.wav"
    assert cosyvoice("synth", "Hello from stdin.", "-o", str(as_file), *at).returncode == 0
    assert as_file.read_bytes() == data


def _read_first_audio(process: subprocess.Popen) -> bytes:
    """Blocks until the header and some audio have come out of synth's stdout (the hang guard
    is not a timing check)."""
    assert process.stdout is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        head = pool.submit(process.stdout.read, HEADER_BYTES + 2).result(timeout=300)
    assert head[:4] == b"RIFF" and len(head) == HEADER_BYTES + 2, head
    return head


def test_a_gateway_that_dies_mid_stream_is_one_line(stack, tmp_path):
    # A gateway of its own, on the module stack's stages, so the other tests keep theirs.
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "gateway", "--port", "0", "--metrics-port", "-1",
         "--speaker-db", ":memory:", *[f"--{name}-addr={stack[name]}" for name in ("llm", "flow", "vocoder", "frontend")]],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert gateway.stdout is not None
        address = next(m.group(1) for line in gateway.stdout if (m := re.search(r"listening on (\S+:\d+)", line)))
        assert wait_serving(address, 120)
        synth = start_synth(LONG, "-o", "-", "--address", address, "--seed", "1")
        _read_first_audio(synth)
        gateway.kill()
        rest, err = synth.communicate(timeout=300)
    finally:
        gateway.kill()
        gateway.wait()
    assert synth.returncode == 1, err
    assert re.fullmatch(r"cosyvoice synth: UNAVAILABLE: the stream broke after \d+\.\d\d s of audio \(.+\)\n",
                        err.decode()), err


def test_ctrl_c_mid_stream_is_one_line_and_exit_130(stack):
    synth = start_synth(LONG, "-o", "-", "--address", stack["gateway"], "--seed", "1")
    _read_first_audio(synth)
    synth.send_signal(signal.SIGINT)
    _, err = synth.communicate(timeout=300)
    assert (synth.returncode, err.decode()) == (130, "cosyvoice synth: interrupted\n")
