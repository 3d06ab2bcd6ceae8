"""Flow compute speed, ours vs the reference, on the full-size CosyVoice 2 flow (random weights).

    python -m scripts.bench_core.flow --audio-seconds 2 --threads 2

Both models get the same weights and the same offline request (finalize=True,
streaming=False: one call over prompt + all tokens), are warmed up, then timed alternately so
machine noise hits both alike. Reported: seconds of compute per second of generated audio
(the real-time factor) for each, and ours / reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from services.common.modeldir.hyperyaml import Tagged, load_hyperyaml
from services.flow.model.config import FlowConfig
from services.flow.model.flow import CausalMaskedDiffWithXvec
from tests.reference.flow import OFFICIAL_YAML, build_reference_flow

TOKEN_RATE = 25  # speech tokens per second of audio


def _flows(yaml_path: Path) -> tuple[torch.nn.Module, CausalMaskedDiffWithXvec]:
    node = load_hyperyaml(yaml_path)["flow"]
    if not isinstance(node, Tagged):
        raise ValueError(f"{yaml_path}: 'flow' is not a !new: node")
    reference = build_reference_flow(node)
    ours = CausalMaskedDiffWithXvec(FlowConfig.from_node(load_hyperyaml(yaml_path)["flow"]))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.eval()


def _time(call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def bench_flow(
    audio_seconds: float,
    threads: int,
    prompt_seconds: float = 1.0,
    repeats: int = 5,
    yaml_path: Path = OFFICIAL_YAML,
) -> dict:
    """Seconds of compute per second of audio for one offline flow call, reference and ours."""
    torch.set_num_threads(threads)
    reference, ours = _flows(yaml_path)
    generator = torch.Generator().manual_seed(0)
    n_tokens, n_prompt = round(audio_seconds * TOKEN_RATE), round(prompt_seconds * TOKEN_RATE)
    token = torch.randint(0, 6561, (1, n_tokens), generator=generator)
    prompt_token = torch.randint(0, 6561, (1, n_prompt), generator=generator)
    prompt_feat = torch.randn(1, 2 * n_prompt, 80, generator=generator)
    embedding = torch.randn(1, 192, generator=generator)
    args = (token, torch.tensor([n_tokens]), prompt_token, torch.tensor([n_prompt]), prompt_feat,
            torch.tensor([2 * n_prompt]), embedding)

    def run_reference() -> torch.Tensor:
        return reference.inference(*args, streaming=False, finalize=True)[0]

    def run_ours() -> torch.Tensor:
        return ours.inference(*args, streaming=False, finalize=True)

    run_reference(), run_ours()  # warm-up (allocator, kernels, lazy tables)
    reference_times, our_times = [], []
    for index in range(repeats):
        # Alternate who goes first so a slow phase of the machine hits both alike.
        order = (run_reference, run_ours) if index % 2 == 0 else (run_ours, run_reference)
        for run in order:
            elapsed, mel = _time(run)
            if run is run_reference:
                reference_times.append(elapsed)
                reference_mel = mel
            else:
                our_times.append(elapsed)
                our_mel = mel
    generated = our_mel.size(2) / 50.0  # seconds of audio at 50 mel frames per second
    # Best-of-N: on a shared machine the minimum is the run least disturbed by others.
    reference_rtf = min(reference_times) / generated
    ours_rtf = min(our_times) / generated
    return {
        "audio_seconds": generated,
        "prompt_seconds": prompt_seconds,
        "threads": threads,
        "repeats": repeats,
        "reference_seconds_per_audio_second": reference_rtf,
        "ours_seconds_per_audio_second": ours_rtf,
        "ratio_ours_over_reference": ours_rtf / reference_rtf,
        "reference_median_seconds_per_audio_second": statistics.median(reference_times) / generated,
        "ours_median_seconds_per_audio_second": statistics.median(our_times) / generated,
        "max_abs_mel_diff": float((reference_mel - our_mel).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    result = bench_flow(options.audio_seconds, options.threads, options.prompt_seconds, options.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
