"""Engine limits; torch-free so the scheduler can use them."""

from __future__ import annotations

from dataclasses import dataclass


class EngineConfigError(ValueError):
    """Invalid engine limits; the message names the field."""


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 8  # running sequences, = KV-cache slots
    max_num_batched_tokens: int = 4096  # prompt positions admitted per prefill step
    max_model_len: int = 4096  # prompt + generated positions per sequence
    # Bistream: reproduce the reference's end-of-text input (re-feeds the last fed input,
    # drops unused prompt speech) for token parity; False feeds the training layout.
    bistream_refeed_quirk: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineConfigError(f"{name} must be a positive integer, got {value!r}")
