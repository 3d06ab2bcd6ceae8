"""Our Qwen2 backbone against transformers' Qwen2 (4.51.3) on the same random weights, and
batched decode against each sequence decoded alone."""

from __future__ import annotations

import pytest
import torch

from services.llm.model.kv_cache import KVCacheError
from services.llm.model.qwen2 import Qwen2Config, Qwen2ForCausalLM, QwenConfigError
from services.tinymodel.qwen_config import tiny_qwen_config

TOL_HF = 1e-4
TOL_BATCH = 1e-5


def _configs(**overrides: object):
    from transformers import Qwen2Config as HFQwen2Config

    raw = {**tiny_qwen_config(vocab_size=300), **overrides}
    hf_config = HFQwen2Config(**raw)
    hf_config._attn_implementation = "sdpa"
    return Qwen2Config.from_dict(raw), hf_config


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 1, "rope_theta": 10000.0}])
def test_matches_transformers_prefill_and_cached_decode(overrides: dict) -> None:
    from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM

    ours_config, hf_config = _configs(**overrides)
    torch.manual_seed(0)
    hf = HFQwen2ForCausalLM(hf_config).eval()
    ours = Qwen2ForCausalLM(ours_config).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)  # same keys, same shapes
    cache = ours.new_kv_cache(num_slots=2, max_model_len=64)
    slot = 1  # not slot 0, so slot indexing is exercised
    prompt = torch.randn(1, 13, ours_config.hidden_size)
    steps = [torch.randn(1, 1, ours_config.hidden_size) for _ in range(4)]

    with torch.inference_mode():
        out = hf(inputs_embeds=prompt, use_cache=True, output_hidden_states=True)
        hidden = ours(prompt, cache.plan([slot], [0], [13]), cache)
        diffs = [(hidden - out.hidden_states[-1]).abs().max().item()]
        diffs.append((ours.lm_head(hidden) - out.logits).abs().max().item())
        past = out.past_key_values
        for i, x in enumerate(steps):
            out = hf(inputs_embeds=x, past_key_values=past, use_cache=True, output_hidden_states=True)
            past = out.past_key_values
            hidden = ours(x, cache.plan([slot], [13 + i], [1]), cache)
            diffs.append((hidden - out.hidden_states[-1]).abs().max().item())
            diffs.append((ours.lm_head(hidden) - out.logits).abs().max().item())
    assert max(diffs) <= TOL_HF, diffs


def _solo_run(model, prompt: torch.Tensor, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    cache = model.new_kv_cache(num_slots=1, max_model_len=32)
    length = prompt.shape[0]
    hidden = [model(prompt[None], cache.plan([0], [0], [length]), cache)[0, -1]]
    for i, x in enumerate(steps):
        hidden.append(model(x[None, None], cache.plan([0], [length + i], [1]), cache)[0, 0])
    return hidden


@pytest.mark.parametrize("slots", [[0, 1, 2], [2, 0, 3]], ids=["contiguous", "scattered"])
def test_batched_decode_equals_each_sequence_alone(slots: list[int]) -> None:
    ours_config, _ = _configs()
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(ours_config).eval()
    dim = ours_config.hidden_size
    lengths = [5, 9, 3]
    prompts = [torch.randn(n, dim) for n in lengths]
    steps = [[torch.randn(dim) for _ in range(5)] for _ in lengths]

    with torch.inference_mode():
        expected = [_solo_run(model, p, s) for p, s in zip(prompts, steps)]
        cache = model.new_kv_cache(num_slots=4, max_model_len=32)
        # Dirty the cache first: stale K/V of a previous occupant must never be seen.
        cache.keys[0].normal_()
        cache.values[1].normal_()
        padded = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
        hidden = model(padded, cache.plan(slots, [0, 0, 0], lengths), cache)
        got = [[hidden[b, n - 1]] for b, n in enumerate(lengths)]
        for i in range(5):
            x = torch.stack([s[i] for s in steps])[:, None]
            starts = [n + i for n in lengths]
            hidden = model(x, cache.plan(slots, starts, [1, 1, 1]), cache)
            for b in range(3):
                got[b].append(hidden[b, 0])
    diff = max((g - e).abs().max().item() for gs, es in zip(got, expected) for g, e in zip(gs, es))
    assert diff <= TOL_BATCH


def test_uneven_decode_batch_after_separate_prefills() -> None:
    """Sequences prefilled at different times, then decoded together (the engine's case)."""
    ours_config, _ = _configs()
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(ours_config).eval()
    dim = ours_config.hidden_size
    a, b = torch.randn(7, dim), torch.randn(2, dim)
    xa, xb = torch.randn(dim), torch.randn(dim)
    with torch.inference_mode():
        want_a = _solo_run(model, a, [xa])[-1]
        want_b = _solo_run(model, b, [xb])[-1]
        cache = model.new_kv_cache(num_slots=2, max_model_len=32)
        model(a[None], cache.plan([0], [0], [7]), cache)
        model(b[None], cache.plan([1], [0], [2]), cache)
        hidden = model(torch.stack([xa, xb])[:, None], cache.plan([0, 1], [7, 2], [1, 1]), cache)
    assert (hidden[0, 0] - want_a).abs().max().item() <= TOL_BATCH
    assert (hidden[1, 0] - want_b).abs().max().item() <= TOL_BATCH


def test_config_and_cache_errors_name_the_field() -> None:
    raw = tiny_qwen_config(vocab_size=300)
    with pytest.raises(QwenConfigError, match="num_key_value_heads"):
        Qwen2Config.from_dict({**raw, "num_key_value_heads": 3})
    with pytest.raises(QwenConfigError, match="hidden_size"):
        Qwen2Config.from_dict({**raw, "hidden_size": "64"})
    with pytest.raises(QwenConfigError, match="rope_scaling"):
        Qwen2Config.from_dict({**raw, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    model = Qwen2ForCausalLM(Qwen2Config.from_dict(raw))
    cache = model.new_kv_cache(num_slots=2, max_model_len=8)
    with pytest.raises(KVCacheError, match="max_model_len"):
        cache.plan([0], [0], [9])
    with pytest.raises(KVCacheError, match="slots"):
        cache.plan([0, 0], [0, 0], [1, 1])
