"""Repetition-aware sampling (RAS), per request, with the request's own `torch.Generator`.

Token-for-token compatible with upstream `cosyvoice.utils.common.ras_sampling` run after
`torch.manual_seed(seed)`: the same float32 softmax and stable sort, the same float32
running sum for the nucleus cut, and `multinomial` called on tensors of the same shape and
values in the same order (multinomial's randomness consumption depends on its input's
shape, so the candidate tensor must be exactly the reference's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from services.common.modeldir.hyperyaml import Tagged


class SamplingParamsError(ValueError):
    """Invalid sampling parameters; the message names the field."""


@dataclass(frozen=True)
class SamplingParams:
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    seed: int | None = None  # None: a fresh nondeterministic seed per request
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SamplingParamsError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        def integer(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SamplingParamsError(f"{name} must be an integer, got {value!r}")
            return value

        if not 0.0 < number("top_p") <= 1.0:
            raise SamplingParamsError(f"top_p must be in (0, 1], got {self.top_p}")
        if integer("top_k") < 1:
            raise SamplingParamsError(f"top_k must be >= 1, got {self.top_k}")
        # win_size 0 would make the reference's `decoded[-0:]` the whole history.
        if integer("win_size") < 1:
            raise SamplingParamsError(f"win_size must be >= 1, got {self.win_size}")
        if not 0.0 < number("tau_r") <= 1.0:
            raise SamplingParamsError(f"tau_r must be in (0, 1], got {self.tau_r}")
        if self.seed is not None and not 0 <= integer("seed") < 2**64:
            raise SamplingParamsError(f"seed must be in [0, 2**64), got {self.seed}")
        if number("min_token_text_ratio") < 0:
            raise SamplingParamsError(f"min_token_text_ratio must be >= 0, got {self.min_token_text_ratio}")
        if number("max_token_text_ratio") <= 0:
            raise SamplingParamsError(f"max_token_text_ratio must be > 0, got {self.max_token_text_ratio}")
        if self.min_token_text_ratio > self.max_token_text_ratio:
            raise SamplingParamsError(
                f"min_token_text_ratio {self.min_token_text_ratio} exceeds "
                f"max_token_text_ratio {self.max_token_text_ratio}"
            )

    @classmethod
    def from_config(cls, llm_node: Tagged | None, **overrides: Any) -> "SamplingParams":
        """Defaults from the yaml's `llm.sampling: !name:...ras_sampling` node, then overrides."""
        values: dict[str, Any] = {}
        sampling = llm_node.get("sampling") if llm_node is not None else None
        if isinstance(sampling, Tagged):
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in sampling.kwargs.items() if k in known}
        return replace(cls(**values), **overrides)


def new_generator(seed: int | None) -> torch.Generator:
    """A CPU generator per request: seeded ones replay `torch.manual_seed(seed)` exactly."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def nucleus_sample(
    scores: torch.Tensor, top_p: float, top_k: int, generator: torch.Generator
) -> int:
    """Top-p (inclusive of the crossing token) within top-k, drawn from unnormalised probs."""
    probs = scores.softmax(dim=0)
    # The reference stable-sorts the whole vocabulary (~0.4 ms for 6564 ids); only its first
    # top_k entries matter. Those are exactly the stable sort of every id whose prob reaches
    # the k-th largest (ties at that boundary included, in ascending id order).
    threshold = probs.topk(min(top_k, probs.numel()), sorted=False).values.min()
    candidates = (probs >= threshold).nonzero().squeeze(1)
    probs, order = probs[candidates].sort(descending=True, stable=True)
    order = candidates[order]
    # The reference adds 0-dim float32 tensors one by one and compares the running sum with
    # top_p in float32, taking the next token while the sum before it is below top_p. The
    # float32 prefix sums of non-negative probs never decrease, so counting them suffices.
    head = probs[:top_k].numpy().astype(np.float32, copy=False)
    prefix = np.add.accumulate(head, dtype=np.float32)
    count = 1 + int(np.count_nonzero(prefix[: len(head) - 1] < np.float32(top_p)))
    return int(order[multinomial_one(probs[:count], generator)])


def multinomial_one(probs: torch.Tensor, generator: torch.Generator) -> int:
    """`torch.multinomial(probs, 1, replacement=True, generator=generator)` without its
    argument checks (a third of a nucleus draw's time): for one sample torch draws
    `q = empty_like(probs).exponential_(1, generator)` and takes `argmax(probs / q)`, so this
    gives the same index and leaves the generator in the same state (checked against torch
    in tests/llm/test_batched_sampling.py)."""
    noise = torch.empty(probs.shape, dtype=probs.dtype).exponential_(1, generator=generator)
    return int((probs / noise).argmax())


def random_sample(scores: torch.Tensor, generator: torch.Generator) -> int:
    """A draw from the full softmax (temperature 1, no cut)."""
    return multinomial_one(scores.softmax(dim=0), generator)


def ras_sample(
    scores: torch.Tensor,
    decoded_tokens: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator,
) -> int:
    """Nucleus draw; if that token occurs in the last win_size tokens at least
    win_size * tau_r times, mask it and redraw from the full distribution.

    `scores` is a 1-D float32 CPU log-prob row and is modified in place.
    """
    token = nucleus_sample(scores, params.top_p, params.top_k, generator)
    window = list(decoded_tokens[-params.win_size :])
    if window.count(token) >= params.win_size * params.tau_r:
        scores[token] = -float("inf")
        token = random_sample(scores, generator)
    return token


def sample_next_token(
    log_probs: torch.Tensor,
    decoded_tokens: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator,
    masked_token: int | None = None,
) -> int:
    """One request's next token from its log-prob row [V] (any device/dtype).

    `masked_token` is the EOS id while the minimum length is not reached: upstream masks only
    that one id (speech_token_size), so the other stop ids stay possible.
    Sampling runs on CPU in float32 so a seed gives the same tokens on any device.
    """
    scores = log_probs.detach().to(device="cpu", dtype=torch.float32).clone()
    if masked_token is not None:
        scores[masked_token] = -float("inf")
    return ras_sample(scores, decoded_tokens, params, generator)
