#!/usr/bin/env python3
"""`make demo`: start the local stack, synthesize out/demo.wav through the gateway, stop the stack.

With no COSYVOICE_MODEL_DIR it uses the random-weight tiny model (generated on first use):
the file is noise, not speech. Point COSYVOICE_MODEL_DIR at a real CosyVoice2-0.5B directory
for speech.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Hello! This is CosyVoice two, streaming through four separate processes."


def main() -> int:
    out = ROOT / "out" / "demo.wav"
    out.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "services.cli.main", "up", "--port", "0"]
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
        synth = [sys.executable, "-m", "services.cli.main", "synth", TEXT, "-o", str(out), "--address", address,
                 "--seed", "0"]
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
