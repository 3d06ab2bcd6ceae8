#!/usr/bin/env python3
"""`make demo`: start the local stack, register a voice, synthesize out/demo.wav in that voice
through the gateway (zero-shot), stop the stack.

With no COSYVOICE_MODEL_DIR it uses the random-weight tiny model (generated on first use) and
its synthetic prompt_sample.wav: the file is noise, not speech. For speech, point
COSYVOICE_MODEL_DIR at a real CosyVoice2-0.5B directory and give a voice: COSYVOICE_PROMPT_AUDIO
(a 3-30 s recording) and COSYVOICE_PROMPT_TEXT (what it says). The official directory has no
preset speakers, so without a recording it cannot speak.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Hello! This is CosyVoice two, streaming through five separate processes."
SPEAKER = "demo"


def voice() -> tuple[str, str] | None:
    """(prompt audio path, transcript): from the environment, else the tiny model's sample."""
    audio, text = os.environ.get("COSYVOICE_PROMPT_AUDIO"), os.environ.get("COSYVOICE_PROMPT_TEXT")
    if audio:
        return audio, text or ""
    if os.environ.get("COSYVOICE_MODEL_DIR"):
        return None
    from services.cli.up import DEFAULT_TINY_DIR
    from services.tinymodel.prompt_audio import PROMPT_TEXT_FILE, PROMPT_WAV

    return str(DEFAULT_TINY_DIR / PROMPT_WAV), (DEFAULT_TINY_DIR / PROMPT_TEXT_FILE).read_text().strip()


def main() -> int:
    out = ROOT / "out" / "demo.wav"
    out.parent.mkdir(exist_ok=True)
    # Free ports, and a speaker database that lives as long as the demo: its voice must not land
    # in the operator's default database (features of one model directory belong with it).
    command = [sys.executable, "-m", "services.cli.main", "up", "--port", "0", "--metrics-port", "0",
               "--speaker-db", ":memory:"]
    if os.environ.get("COSYVOICE_MODEL_DIR"):
        command += ["--model-dir", os.environ["COSYVOICE_MODEL_DIR"]]
    stack = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    address = None
    try:
        assert stack.stdout is not None
        for line in stack.stdout:
            print(line, end="", flush=True)
            match = re.match(r"gateway (\S+:\d+)", line)
            if match:
                address = match.group(1)
            if line.startswith("ready"):
                break
        if address is None or stack.poll() is not None:
            print("demo: the stack did not start", file=sys.stderr)
            return 1
        cli = [sys.executable, "-m", "services.cli.main"]
        synth = [*cli, "synth", TEXT, "-o", str(out), "--address", address, "--seed", "0"]
        prompt = voice()
        if prompt is not None:
            audio, text = prompt
            if not text:
                print("demo: COSYVOICE_PROMPT_TEXT must say what COSYVOICE_PROMPT_AUDIO says", file=sys.stderr)
                return 1
            add = [*cli, "speakers", "add", SPEAKER, "--prompt-audio", audio, "--prompt-text", text, "--overwrite",
                   "--address", address]
            if subprocess.call(add, cwd=ROOT) != 0:
                return 1
            synth += ["--speaker", SPEAKER]
        else:
            print("demo: no COSYVOICE_PROMPT_AUDIO: using the model's preset speakers (sft)", flush=True)
        return subprocess.call(synth, cwd=ROOT)
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stack.kill()
        print(f"demo: stack stopped (exit code {stack.returncode})")


if __name__ == "__main__":
    raise SystemExit(main())
