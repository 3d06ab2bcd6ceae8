"""Real-time factor of the full-size CosyVoice2 HiFT vocoder: ours against the reference.

Both are built with random weights from the official cosyvoice2.yaml `hift` node (base and cond
channels 512); ours gets the reference's weights through the official checkpoint format, so the
two do identical work on the same mel. Runs alternate (reference, ours, reference, …) after a
warm-up so that load from other processes hits both alike; the median of each is reported.

    python -m scripts.bench_core.hift --seconds 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from services.vocoder.model.config import parse_hift_config
from services.vocoder.model.loader import build_hift_from_config, load_hift_state
from tests.reference.hift import OFFICIAL_V2_YAML, build_reference_hift, hift_node

MEL_FRAMES_PER_SECOND = 50  # 24 kHz / hop 480


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_hift(
    audio_seconds: float, threads: int, repeats: int = 3, yaml_path: Path = OFFICIAL_V2_YAML
) -> dict[str, float]:
    """Compute seconds per audio second for the reference and for ours, and ours / reference."""
    if audio_seconds <= 0 or threads <= 0 or repeats <= 0:
        raise ValueError("audio_seconds, threads and repeats must be positive")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        node = hift_node(yaml_path)
        torch.manual_seed(0)
        reference = build_reference_hift(node)
        ours = build_hift_from_config(parse_hift_config(node)).eval()
        load_hift_state(ours, dict(reference.state_dict()), "reference HiFTGenerator")
        frames = max(1, round(audio_seconds * MEL_FRAMES_PER_SECOND))
        mel = torch.randn(1, node["in_channels"], frames)
        generator = torch.Generator()

        def run_reference() -> object:
            return reference.inference(speech_feat=mel)

        def run_ours() -> object:
            return ours.inference(mel, generator=generator)

        run_reference(), run_ours()  # warm-up: allocator, oneDNN primitive caches
        reference_times, our_times = [], []
        for _ in range(repeats):
            reference_times.append(_timed(run_reference))
            our_times.append(_timed(run_ours))
    finally:
        torch.set_num_threads(previous_threads)
    seconds = frames / MEL_FRAMES_PER_SECOND
    reference_rtf = statistics.median(reference_times) / seconds
    ours_rtf = statistics.median(our_times) / seconds
    return {
        "audio_seconds": seconds,
        "threads": threads,
        "repeats": repeats,
        "reference_rtf": reference_rtf,
        "ours_rtf": ours_rtf,
        "ratio": ours_rtf / reference_rtf,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length to vocode")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
    args = parser.parse_args()
    print(json.dumps(bench_hift(args.seconds, args.threads, args.repeats), indent=2))


if __name__ == "__main__":
    main()
