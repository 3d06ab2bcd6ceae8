"""Ranges of the LLM's per-request sampling overrides, checked by the servicer (torch-free).

The gateway never sets these (it sends a seed only), so the ranges are generous around the
reference's yaml defaults (top_p 0.8, top_k 25, win_size 10, tau_r 0.1, token/text ratios
2 and 20) while ruling out values that would make one request run away: a
max_token_text_ratio of 1e30 would let one request sample up to max_model_len tokens of
noise, holding a KV slot for minutes.
"""

from __future__ import annotations

from services.common.pb import llm_pb2
from services.common.request_limits import Range, check_range

SAMPLING_RANGES: dict[str, Range] = {
    "top_p": Range(0.0, 1.0, low_open=True),
    "top_k": Range(1, 1000),
    "win_size": Range(1, 1000),
    "tau_r": Range(0.0, 1.0, low_open=True),
    # 100 speech tokens (4 s of audio) per text token is 5× the reference's maximum.
    "min_token_text_ratio": Range(0.0, 100.0),
    "max_token_text_ratio": Range(0.0, 100.0, low_open=True),
}
# Every uint64 is a valid seed; the proto type is its range.
OVERRIDABLE = ("seed", *SAMPLING_RANGES)


def sampling_overrides(sampling: llm_pb2.SamplingParams, field: str = "sampling") -> dict[str, object]:
    """The sampling settings the caller set, each checked; the rest keep the yaml's values."""
    overrides: dict[str, object] = {}
    for name in OVERRIDABLE:
        if not sampling.HasField(name):
            continue
        value = getattr(sampling, name)
        if name in SAMPLING_RANGES:
            check_range(value, SAMPLING_RANGES[name], f"{field}.{name}")
        overrides[name] = value
    return overrides
