#!/usr/bin/env python3
"""Memory of each service: resident memory (and GPU memory per device on cuda) after loading
and warm-up, and again after one request. The numbers of docs/deploy.md's memory table.

    python scripts/measure_memory.py --model-dir DIR [--device cpu|cuda] [--json OUT.json]

It starts the five services as `cosyvoice up` does (free ports), reads every service's
/metrics (`process_resident_memory_bytes`, `cosyvoice_gpu_memory_{allocated,reserved}_bytes`),
synthesises one short text in the voice of the directory's `prompt_sample.wav` (or
--prompt-audio/--prompt-text), reads them again, and stops everything. With random weights the
LLM rarely stops early, so keep the text short: the request then ends at the reference's length
limit (20 speech tokens per text token).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.cli.up import Child, start_stack, stop_all, wait_serving  # noqa: E402

MEMORY_METRICS = {
    "process_resident_memory_bytes": "rss",
    "cosyvoice_gpu_memory_allocated_bytes": "gpu_allocated",
    "cosyvoice_gpu_memory_reserved_bytes": "gpu_reserved",
}


def scrape(child: Child) -> dict[str, float]:
    """This service's memory samples, e.g. {"rss": ..., "gpu_reserved cuda:0": ...}."""
    with urllib.request.urlopen(f"http://{child.metrics_address}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = MEMORY_METRICS.get(sample.name)
            if key:
                device = sample.labels.get("device")
                found[f"{key} {device}" if device else key] = sample.value
    return found


def voice(model_dir: Path, audio: str | None, text: str | None) -> list[str]:
    if audio:
        return ["--prompt-audio", audio, "--prompt-text", text or ""]
    sample = model_dir / "prompt_sample.wav"
    if not sample.is_file():
        raise SystemExit(f"measure_memory: {model_dir} has no prompt_sample.wav; give --prompt-audio and --prompt-text")
    transcript = (model_dir / "prompt_sample.txt").read_text().strip()
    return ["--prompt-audio", str(sample), "--prompt-text", transcript]


def measure(model_dir: Path, device: str, text: str, voice_args: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    children = start_stack(model_dir, device, metrics_port=0)
    try:
        gateway = children[0]
        if not wait_serving(gateway.address, 1800):
            raise SystemExit("measure_memory: the gateway did not report SERVING")
        result = {child.name: {"after_warm_up": scrape(child)} for child in children}
        with tempfile.TemporaryDirectory() as scratch:
            synth = subprocess.run(
                [sys.executable, "-m", "services.cli.main", "synth", text, "-o", f"{scratch}/out.wav",
                 "--address", gateway.address, "--mode", "zero_shot", *voice_args],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )
        if synth.returncode != 0:
            raise SystemExit(f"measure_memory: synth failed: {synth.stderr.strip()}")
        for child in children:
            result[child.name]["after_one_request"] = scrape(child)
        return result
    finally:
        stop_all(children, grace=15.0)


def table(result: dict[str, dict[str, dict[str, float]]]) -> str:
    keys = sorted({key for phases in result.values() for sample in phases.values() for key in sample})
    lines = ["| service | " + " | ".join(f"{key}, warm-up / one request (GB)" for key in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, phases in result.items():
        cells = []
        for key in keys:
            before, after = phases["after_warm_up"].get(key), phases["after_one_request"].get(key)
            cells.append("" if before is None else f"{before / 1e9:.2f} / {after / 1e9:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--text", default="Hi.")
    parser.add_argument("--prompt-audio")
    parser.add_argument("--prompt-text")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args()
    result = measure(args.model_dir, args.device, args.text, voice(args.model_dir, args.prompt_audio, args.prompt_text))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "model_dir": str(args.model_dir), **result}, indent=2))


if __name__ == "__main__":
    main()
