"""RAS sampling: token-identical to upstream's (reference nucleus/random sampling on the
global RNG after manual_seed), per-request generators, typed parameter errors."""

from __future__ import annotations

import pytest
import torch

from services.common.modeldir.hyperyaml import Tagged
from services.llm.model.sampling import (
    SamplingParams,
    SamplingParamsError,
    new_generator,
    sample_next_token,
)
from tests.reference.llm import upstream_ras_sampling

VOCAB = 6564
EOS = 6561


def _log_probs(kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "flat":  # nucleus = full top-k
        logits = torch.randn(VOCAB, generator=gen) * 0.5
    elif kind == "medium":  # nucleus crosses top_p around the top-k boundary
        logits = torch.randn(VOCAB, generator=gen) * 3.7
    elif kind == "sharp":  # nucleus crosses top_p after a few tokens
        logits = torch.randn(VOCAB, generator=gen) * 4.0
    elif kind == "ties":  # few distinct values: equal probs straddle the top-k boundary
        logits = torch.randint(0, 4, (VOCAB,), generator=gen).float() * 0.7
        logits[:30] = 2.1  # 30 ids tie for the top, so top-25 cuts through the tie
    else:  # "spiky": one dominant token, so repeats (and the RAS fallback) are frequent
        logits = torch.randn(VOCAB, generator=gen)
        logits[int(torch.randint(0, 50, (1,), generator=gen))] += 12.0
    return logits.log_softmax(dim=0)


@pytest.mark.parametrize("kind", ["flat", "medium", "sharp", "ties", "spiky"])
def test_tokens_identical_to_upstream_ras_after_manual_seed(kind: str) -> None:
    data_gen = torch.Generator().manual_seed(7)
    params = SamplingParams(seed=1234)
    ours_gen = new_generator(params.seed)
    torch.manual_seed(1234)
    ours_history: list[int] = []
    ref_history: list[int] = []
    fallbacks = 0
    for step in range(60):
        log_probs = _log_probs(kind, data_gen)
        history_mask = EOS if step < 10 else None
        token = sample_next_token(log_probs, ours_history, params, ours_gen, history_mask)
        scores = log_probs.clone()
        if history_mask is not None:
            scores[EOS] = -float("inf")
        expected = upstream_ras_sampling(scores, ref_history, 25, 0.8, 25, 10, 0.1)
        assert token == expected, f"step {step}"
        # In "spiky" rows the dominant token alone fills the nucleus; any other token means
        # the RAS fallback (mask the repeat, redraw from the full softmax) ran.
        fallbacks += int(kind == "spiky" and token != int(log_probs.argmax()))
        ours_history.append(token)
        ref_history.append(expected)
    if kind == "spiky":
        assert fallbacks >= 3, fallbacks


def test_masked_eos_is_never_drawn_and_input_is_not_modified() -> None:
    log_probs = torch.full((VOCAB,), -50.0)
    log_probs[EOS] = 0.0  # EOS would win every draw
    log_probs = log_probs.log_softmax(dim=0)
    before = log_probs.clone()
    gen = new_generator(0)
    tokens = [sample_next_token(log_probs, [], SamplingParams(), gen, EOS) for _ in range(20)]
    assert EOS not in tokens
    assert torch.equal(log_probs, before)
    assert sample_next_token(log_probs, [], SamplingParams(), gen, None) == EOS


def test_sampling_never_touches_the_global_rng() -> None:
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    gen = new_generator(5)
    for _ in range(10):
        sample_next_token(torch.randn(VOCAB, generator=gen).log_softmax(0), [3, 3], SamplingParams(), gen)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_per_row_params_and_generators_are_independent() -> None:
    log_probs = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3)).mul(3).log_softmax(0)
    a = [sample_next_token(log_probs, [], SamplingParams(top_k=5), new_generator(1)) for _ in range(3)]
    b = [sample_next_token(log_probs, [], SamplingParams(top_k=5), new_generator(1)) for _ in range(3)]
    assert a == b
    top5 = set(log_probs.topk(5).indices.tolist())
    gen = new_generator(2)
    assert all(sample_next_token(log_probs, [], SamplingParams(top_k=5, top_p=1.0), gen) in top5
               for _ in range(30))


@pytest.mark.parametrize(
    "field, value",
    [
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("top_k", 2.5),
        ("win_size", 0),
        ("tau_r", 0.0),
        ("seed", -1),
        ("min_token_text_ratio", -1.0),
        ("max_token_text_ratio", 0),
        ("top_p", "0.8"),
    ],
)
def test_invalid_params_raise_typed_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(SamplingParamsError, match=field):
        SamplingParams(**{field: value})


def test_min_ratio_above_max_ratio_is_rejected() -> None:
    with pytest.raises(SamplingParamsError, match="min_token_text_ratio"):
        SamplingParams(min_token_text_ratio=5, max_token_text_ratio=4)


def test_defaults_come_from_the_yaml_sampling_node() -> None:
    node = Tagged(
        "new",
        "cosyvoice.llm.llm.Qwen2LM",
        kwargs={"sampling": Tagged("name", "cosyvoice.utils.common.ras_sampling",
                                   kwargs={"top_p": 0.7, "top_k": 15, "win_size": 8, "tau_r": 0.25})},
    )
    params = SamplingParams.from_config(node, seed=4)
    assert (params.top_p, params.top_k, params.win_size, params.tau_r, params.seed) == (0.7, 15, 8, 0.25, 4)
    assert SamplingParams.from_config(None) == SamplingParams()
