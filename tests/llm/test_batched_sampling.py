"""Batched RAS sampling: the same tokens, and the same generator states, as sampling each row
on its own with `sample_next_token` (which is itself checked against upstream's RAS)."""

from __future__ import annotations

import pytest
import torch

from services.llm.model.batched_sampling import SampleRow, sample_batch
from services.llm.model.sampling import SamplingParams, new_generator, sample_next_token

VOCAB = 6564
EOS = 6561


def _rows_of_logits(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "flat":
        logits = torch.randn(n, VOCAB, generator=gen) * 0.5
    elif kind == "medium":
        logits = torch.randn(n, VOCAB, generator=gen) * 3.7
    elif kind == "ties":  # equal probs straddle the top-k boundary in every row
        logits = torch.randint(0, 4, (n, VOCAB), generator=gen).float() * 0.7
        logits[:, :30] = 2.1
    elif kind == "ties_inside":  # ties inside the top set only: the batched path's ordering
        logits = torch.randn(n, VOCAB, generator=gen) * 0.3
        logits[:, 100:110] = 6.0
        logits[:, 200:205] = 6.0
    else:  # "spiky": RAS falls back often
        logits = torch.randn(n, VOCAB, generator=gen)
        logits[torch.arange(n), torch.randint(0, 50, (n,), generator=gen)] += 12.0
    return logits.log_softmax(dim=-1)


def _params(i: int) -> SamplingParams:
    # Mixed per-row settings: the batch must not assume one top_k/top_p/window for all rows.
    variants = [SamplingParams(), SamplingParams(top_k=5, top_p=0.5), SamplingParams(top_k=40, top_p=0.95),
                SamplingParams(top_k=1), SamplingParams(win_size=4, tau_r=0.5)]
    return variants[i % len(variants)]


@pytest.mark.parametrize("kind", ["flat", "medium", "ties", "ties_inside", "spiky"])
@pytest.mark.parametrize("n", [1, 7])
def test_batch_equals_row_by_row(kind: str, n: int) -> None:
    data = torch.Generator().manual_seed(5)
    batch_gens = [new_generator(100 + i) for i in range(n)]
    solo_gens = [new_generator(100 + i) for i in range(n)]
    batch_hist: list[list[int]] = [[] for _ in range(n)]
    solo_hist: list[list[int]] = [[] for _ in range(n)]
    for step in range(25):
        log_probs = _rows_of_logits(kind, n, data)
        masks = [EOS if (step < 8 and i % 2 == 0) else None for i in range(n)]
        before = log_probs.clone()
        rows = [SampleRow(_params(i), batch_gens[i], batch_hist[i], masks[i]) for i in range(n)]
        batched = sample_batch(log_probs, rows)
        assert torch.equal(log_probs, before)
        solo = [sample_next_token(log_probs[i], solo_hist[i], _params(i), solo_gens[i], masks[i]) for i in range(n)]
        assert batched == solo, f"step {step}"
        for i in range(n):
            batch_hist[i].append(batched[i])
            solo_hist[i].append(solo[i])
    for a, b in zip(batch_gens, solo_gens):
        assert torch.equal(a.get_state(), b.get_state())


def test_multinomial_is_argmax_over_exponential_noise() -> None:
    """The fact the batched draw rests on, for the torch installed: one multinomial sample
    from p equals argmax(p / q), q drawn by exponential_ in p's shape, and uses the same
    randomness."""
    for size in (1, 3, 25, 6564):
        for seed in range(20):
            p = torch.rand(size, generator=torch.Generator().manual_seed(seed + 99)) ** 4
            g1, g2 = new_generator(seed), new_generator(seed)
            a = int(torch.multinomial(p, 1, replacement=True, generator=g1))
            b = int(torch.argmax(p / torch.empty(size).exponential_(1, generator=g2)))
            assert a == b
            assert torch.equal(g1.get_state(), g2.get_state())


def test_row_count_mismatch_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="2 log-prob rows but 1 sample rows"):
        sample_batch(torch.zeros(2, VOCAB), [SampleRow(SamplingParams(), new_generator(0), [])])


def test_empty_batch() -> None:
    assert sample_batch(torch.zeros(0, VOCAB), []) == []
