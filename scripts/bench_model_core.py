#!/usr/bin/env python3
"""Model-core benchmark: reference vs ours, side by side in one run, full-size CosyVoice2 shapes.

Random weights with the official cosyvoice2.yaml dimensions (Qwen2-0.5B LLM, 71 M-parameter
flow estimator, 20.8 M-parameter HiFT), on this CPU, both implementations in the same
process and run alternately so machine noise hits both. Prints:
- LLM milliseconds per decode step (~150-position context),
- flow seconds of compute per second of audio (offline call, 1 s prompt),
- HiFT real-time factor,
and each ratio ours / reference (must be <= 1.0).

Usage: python scripts/bench_model_core.py [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_core.flow import bench_flow  # noqa: E402
from scripts.bench_core.hift import bench_hift  # noqa: E402
from scripts.bench_core.llm import bench_llm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llm-steps", type=int, default=30)
    parser.add_argument("--audio-seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    llm = bench_llm(args.llm_steps, args.threads)
    print(f"LLM   decode step   reference {llm['reference_ms_per_step']:8.1f} ms   ours {llm['ours_ms_per_step']:8.1f} ms"
          f"   ours/reference {llm['ratio_ours_over_reference']:.2f}", flush=True)
    flow = bench_flow(args.audio_seconds, args.threads)
    print(f"flow  s per audio-s reference {flow['reference_seconds_per_audio_second']:8.3f}      "
          f"ours {flow['ours_seconds_per_audio_second']:8.3f}      ours/reference {flow['ratio_ours_over_reference']:.2f}",
          flush=True)
    hift = bench_hift(args.audio_seconds, args.threads)
    print(f"HiFT  RTF           reference {hift['reference_rtf']:8.3f}      ours {hift['ours_rtf']:8.3f}"
          f"      ours/reference {hift['ratio']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"llm": llm, "flow": flow, "hift": hift}, indent=2) + "\n")


if __name__ == "__main__":
    main()
