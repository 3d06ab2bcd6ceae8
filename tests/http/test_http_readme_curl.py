"""The README's HTTP API curl examples, run as written with the real curl binary against the
session's live stack (tests/http/conftest.py), in the README's order: a fresh stack has no
voice "alice" until the register command, so the order is part of what is proven.

Changes to each command, none to what it asks the server: the README's address becomes the
live front's, the Bearer header the README tells key users to add goes in (the stack checks
keys), `--fail-with-body` makes an HTTP error a failed command, `--max-time` bounds a hang,
and the `| aplay` pipe becomes `-o FILE` (no sound card here). `alice.wav` is the tiny
model's sample recording, copied under that name into the commands' working directory."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.tinymodel.prompt_audio import PROMPT_WAV
from tests.http.conftest import FULL_KEY

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8080"
SAMPLE_RATE = 24000
VOICE = "alice"
CURL_SECONDS = 120  # a hung request fails the test instead of blocking the suite

needs_curl = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="the curl binary is not installed (.ci/run installs Debian's curl)")


def readme_curl_commands(readme: str) -> list[str]:
    """The curl commands of the first fenced block after "## HTTP API", one per command:
    backslash continuations joined, comment lines dropped."""
    section = readme.split("\n## HTTP API\n", 1)
    assert len(section) == 2, "README.md has no '## HTTP API' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section[1], re.S | re.M)
    assert block, "the README's HTTP API section has no fenced code block"
    joined = re.sub(r"\\\n\s*", "", block.group(1))
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Prepared:
    shell: str  # what bash runs
    output: str | None  # the file curl writes, or None: the body is on stdout


def prepare(command: str, url: str) -> Prepared:
    assert command.startswith("curl "), f"not a curl command: {command!r}"
    assert README_URL in command, f"the command does not call {README_URL}: {command!r}"
    shell = command.replace(README_URL, url)
    if "| aplay" in shell:  # played in the README; saved here
        shell = shell.split("| aplay", 1)[0].rstrip() + " -o streamed.pcm"
    flags = f'--fail-with-body --max-time {CURL_SECONDS} -H "Authorization: Bearer $KEY"'
    shell = "curl " + flags + shell[len("curl"):]
    written = re.search(r"\s-o\s+(\S+)", shell)
    return Prepared(shell, written.group(1) if written else None)


def check_wav(path: Path) -> None:
    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == SAMPLE_RATE, f"{path.name}: {rate} Hz"
    assert len(samples) > 0, f"{path.name}: no samples"


def check_pcm(body: bytes, name: str) -> None:
    assert len(body) > 0 and len(body) % 2 == 0, f"{name}: {len(body)} bytes of s16le PCM"


def check_sse(body: str) -> None:
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert "speech.audio.delta" in kinds and kinds[-1] == "speech.audio.done", f"SSE events: {kinds}"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    check_pcm(audio, "SSE deltas")


def check(command: str, prepared: Prepared, stdout: bytes, cwd: Path) -> str:
    """Asserts what the command must have produced; returns what kind of call it was."""
    if prepared.output is not None:
        written = cwd / prepared.output
        assert written.is_file(), f"curl wrote no {prepared.output}"
        if prepared.output.endswith(".wav"):
            check_wav(written)
            return "wav"
        check_pcm(written.read_bytes(), prepared.output)
        return "pcm"
    text = stdout.decode("utf-8")
    if '"stream_format": "sse"' in command:
        check_sse(text)
        return "sse"
    if "-X DELETE" in command and "/v1/audio/voices/" in command:
        assert json.loads(text) == {"name": VOICE, "deleted": True}, text
        return "delete"
    if command.rstrip().endswith("/v1/audio/voices"):
        voices = json.loads(text)["voices"]
        assert isinstance(voices, list) and VOICE in {v["name"] for v in voices}, text
        return "list"
    if "/v1/audio/voices" in command and f"name={VOICE}" in command:
        assert json.loads(text)["name"] == VOICE, text
        return "register"
    raise AssertionError(f"no check for this README command; add one to this test: {command!r}")


def test_readme_commands_are_found() -> None:
    commands = readme_curl_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 8, commands
    assert all(c.startswith("curl ") for c in commands), commands


@needs_curl
def test_readme_curl_examples_run_against_a_live_stack(http_stack, tmp_path: Path) -> None:
    shutil.copyfile(http_stack.model_dir / PROMPT_WAV, tmp_path / "alice.wav")
    commands = readme_curl_commands(README.read_text(encoding="utf-8"))
    kinds = []
    for command in commands:
        prepared = prepare(command, http_stack.url)
        done = subprocess.run(["bash", "-c", prepared.shell], cwd=tmp_path, capture_output=True,
                              env={**os.environ, "KEY": FULL_KEY}, timeout=CURL_SECONDS + 30)
        body = done.stdout
        if done.returncode != 0 and prepared.output and (tmp_path / prepared.output).is_file():
            body = (tmp_path / prepared.output).read_bytes()  # --fail-with-body wrote the error there
        assert done.returncode == 0, (f"README command failed (curl exit {done.returncode}): {command}\n"
                                      f"body: {body[-2000:]!r}\nstderr: {done.stderr[-2000:]!r}")
        kinds.append(check(command, prepared, done.stdout, tmp_path))
    # Every endpoint the README shows was run: a dropped example fails here, not silently.
    assert sorted(set(kinds)) == ["delete", "list", "pcm", "register", "sse", "wav"], kinds
    assert kinds.count("wav") == 2 and kinds.count("pcm") == 2, kinds
