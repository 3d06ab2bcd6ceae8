"""Engine limits; torch-free so the scheduler can use them."""

from __future__ import annotations

from dataclasses import dataclass


class EngineConfigError(ValueError):
    """Invalid engine limits; the message names the field."""


DECODE_GRAPH_MODES = ("off", "cuda", "eager")


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 8  # running sequences, = KV-cache slots
    max_num_batched_tokens: int = 4096  # prompt positions admitted per prefill step
    max_model_len: int = 4096  # prompt + generated positions per sequence
    # Bistream: reproduce the reference's end-of-text input (re-feeds the last fed input,
    # drops unused prompt speech) for token parity; False feeds the training layout.
    bistream_refeed_quirk: bool = True
    # Decode through static buffers at fixed batch sizes (decode_graphs.py): "off" decodes
    # each batch as it comes, "cuda" captures a CUDA graph per size at start, "eager" runs
    # the same padded static-buffer step without capture (CPU-testable).
    decode_graphs: str = "off"
    graph_max_batch: int = 0  # largest graph batch size; 0 = max_num_seqs. Larger batches run eagerly.

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.decode_graphs not in DECODE_GRAPH_MODES:
            raise EngineConfigError(
                f"decode_graphs must be one of {', '.join(DECODE_GRAPH_MODES)}, got {self.decode_graphs!r}"
            )
        value = self.graph_max_batch
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.max_num_seqs:
            raise EngineConfigError(
                f"graph_max_batch must be an integer in [0, max_num_seqs={self.max_num_seqs}], got {value!r}"
            )

    @property
    def graph_batch_limit(self) -> int:
        return self.graph_max_batch or self.max_num_seqs
