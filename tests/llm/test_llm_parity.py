"""Parity with the reference `Qwen2LM`: its weights saved as llm.pt, loaded through our
strict loader; per-step log-probs and sampled tokens against an upstream-semantics oracle
loop driving the reference module's layers (tests/reference/llm.py)."""

from __future__ import annotations

import pytest
import torch

from services.llm.engine.config import EngineConfig
from services.llm.engine.llm_engine import LLMEngine
from services.llm.model.prompt import LLMPrompt, build_prompt, length_limits
from services.llm.model.sampling import SamplingParams, new_generator, sample_next_token
from tests.reference.llm import reference_decode, reference_lm_input

TOL_LOGP = 1e-4
TEXT = list(range(40, 52))  # N = 12 target text tokens: min_len 24


def _our_decode(model, prompt: LLMPrompt, params: SamplingParams):
    """Our model driven step by step, recording log-probs, with our sampler."""
    min_len, max_len = length_limits(
        prompt.num_target_text_tokens, params.min_token_text_ratio, params.max_token_text_ratio
    )
    generator = new_generator(params.seed)
    cache = model.new_kv_cache(num_slots=2, max_model_len=prompt.num_positions + max_len)
    tokens: list[int] = []
    log_probs: list[torch.Tensor] = []
    with torch.inference_mode():
        x = model.embed_prompt(prompt)[None]
        plan = cache.plan([1], [0], [x.shape[1]])
        for i in range(max_len):
            logp = model.log_probs(model(x, plan, cache)[:, -1])[0]
            log_probs.append(logp)
            token = sample_next_token(logp, tokens, params, generator, model.eos_token if i < min_len else None)
            if token in model.stop_token_ids:
                return tokens, log_probs, token
            tokens.append(token)
            x = model.embed_speech_tokens(torch.tensor([token]))[None]
            plan = cache.plan([1], [prompt.num_positions + i], [1])
    return tokens, log_probs, None


CASES = {
    "zero_shot": (build_prompt("zero_shot", TEXT, prompt_text_ids=[7, 8, 9, 10],
                               prompt_speech_tokens=[11, 500, 6000, 42, 42, 3]), 3.0),
    "sft": (build_prompt("sft", TEXT), 3.0),
    "instruct2": (build_prompt("instruct2", TEXT, instruct_text_ids=[1, 2, 3, 299]), 2.5),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1986])
def test_logprobs_and_tokens_match_reference(reference_setup, tiny_lm, case: str, seed: int) -> None:
    _, reference = reference_setup
    prompt, max_ratio = CASES[case]
    params = SamplingParams(seed=seed, max_token_text_ratio=max_ratio)
    min_len, max_len = length_limits(12, params.min_token_text_ratio, max_ratio)
    lm_input = reference_lm_input(reference, list(prompt.text_ids), list(prompt.speech_tokens))
    with torch.inference_mode():
        assert (tiny_lm.embed_prompt(prompt) - lm_input[0]).abs().max().item() == 0.0
    expected = reference_decode(reference, lm_input, min_len, max_len, seed)
    tokens, log_probs, stopped_by = _our_decode(tiny_lm, prompt, params)

    assert len(expected.log_probs) >= 21  # prefill + at least 20 decode steps
    assert tokens == expected.tokens
    assert stopped_by == expected.stopped_by
    diff = max((a - b).abs().max().item() for a, b in zip(log_probs, expected.log_probs))
    assert diff <= TOL_LOGP


@pytest.mark.parametrize("seed", [3, 4])
def test_engine_tokens_match_reference_when_stopping_by_eos(reference_setup_eos, seed: int) -> None:
    from services.llm.model.loader import load_llm

    model_dir, reference = reference_setup_eos
    model = load_llm(model_dir)
    prompt = build_prompt("sft", TEXT)
    params = SamplingParams(seed=seed)
    min_len, max_len = length_limits(12, 2, 20)
    lm_input = reference_lm_input(reference, list(prompt.text_ids), [])
    expected = reference_decode(reference, lm_input, min_len, max_len, seed)
    assert expected.stopped_by == model.eos_token  # the boosted EOS ends it after min_len
    assert len(expected.tokens) >= min_len

    engine = LLMEngine(model, EngineConfig(max_num_seqs=2, max_model_len=512))
    assert list(engine.generate(prompt, params)) == expected.tokens
