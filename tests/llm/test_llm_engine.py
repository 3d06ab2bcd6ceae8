"""LLMEngine: shared decode steps, abort and slot reuse, stop/length rules, determinism."""

from __future__ import annotations

import copy

import pytest
import torch

from services.llm.engine.config import EngineConfig
from services.llm.engine.llm_engine import LLMEngine, RequestError, StepOutput
from services.llm.engine.scheduler import SchedulerError
from services.llm.model.prompt import PromptError, build_prompt
from services.llm.model.sampling import SamplingParams

PARAMS = SamplingParams(max_token_text_ratio=4)  # N=4..6 → at most 16..24 tokens
PROMPTS = {
    "a": build_prompt("sft", [40, 41, 42, 43]),
    "b": build_prompt("zero_shot", [50, 51, 52, 53, 54], prompt_text_ids=[5, 6],
                      prompt_speech_tokens=[100, 200, 300]),
    "c": build_prompt("instruct2", [60, 61, 62, 63, 64, 65], instruct_text_ids=[1, 2, 3]),
}
SEEDS = {"a": 11, "b": 22, "c": 33}


def _engine(model, max_num_seqs: int = 4, max_model_len: int = 128) -> LLMEngine:
    return LLMEngine(model, EngineConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len))


def _solo(model, name: str) -> list[int]:
    params = SamplingParams(seed=SEEDS[name], max_token_text_ratio=4)
    return list(_engine(model, max_num_seqs=1).generate(PROMPTS[name], params))


def _drain(engine: LLMEngine) -> dict[str, list[StepOutput]]:
    outputs: dict[str, list[StepOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def _tokens(outputs: list[StepOutput]) -> list[int]:
    return [o.token for o in outputs if o.token is not None]


def test_concurrent_requests_share_decode_steps_and_match_solo_runs(tiny_lm) -> None:
    engine = _engine(tiny_lm)
    batches: list[tuple[int, bool]] = []
    run = engine.runner.run
    engine.runner.run = lambda seqs, is_prefill: batches.append((len(seqs), is_prefill)) or run(seqs, is_prefill)
    for name in ("a", "b"):
        engine.add_request(name, PROMPTS[name], SamplingParams(seed=SEEDS[name], max_token_text_ratio=4))
    outputs: dict[str, list[StepOutput]] = {}
    for step in range(40):
        if step == 3:  # a late arrival joins the running batch
            engine.add_request("c", PROMPTS["c"], SamplingParams(seed=SEEDS["c"], max_token_text_ratio=4))
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        if not engine.has_unfinished():
            break
    assert batches[0] == (2, True)
    assert (1, True) in batches and (3, False) in batches  # c's prefill, then all three decode
    for name in PROMPTS:
        assert _tokens(outputs[name]) == _solo(tiny_lm, name), name
        assert outputs[name][-1].finished and outputs[name][-1].finish_reason in ("stop", "length")
        assert all(not o.finished for o in outputs[name][:-1])
    assert engine.runner.num_free_slots == 4


def test_abort_frees_the_slot_for_reuse_without_leaking_state(tiny_lm) -> None:
    engine = _engine(tiny_lm, max_num_seqs=2)
    engine.add_request("a", PROMPTS["a"], SamplingParams(seed=1, max_token_text_ratio=4))
    engine.add_request("b", PROMPTS["b"], SamplingParams(seed=2, max_token_text_ratio=4))
    for _ in range(4):
        engine.step()
    slot_a = engine.scheduler.find("a").slot
    assert engine.runner.num_free_slots == 0
    assert engine.abort_request("a") is True
    assert engine.abort_request("a") is False
    assert engine.runner.num_free_slots == 1
    engine.add_request("c", PROMPTS["c"], SamplingParams(seed=SEEDS["c"], max_token_text_ratio=4))
    first = engine.step()
    assert StepOutput("a", None, True, "abort") in first
    assert engine.scheduler.find("c").slot == slot_a
    outputs = [o for o in first if o.request_id == "c"] + _drain(engine)["c"]
    assert _tokens(outputs) == _solo(tiny_lm, "c")  # the stale K/V of "a" never leaks


def test_generate_yields_incrementally_and_closing_aborts(tiny_lm) -> None:
    engine = _engine(tiny_lm)
    tokens = engine.generate(PROMPTS["a"], SamplingParams(seed=SEEDS["a"], max_token_text_ratio=4))
    expected = _solo(tiny_lm, "a")
    assert [next(tokens), next(tokens)] == expected[:2]
    assert engine.scheduler.num_running == 1
    tokens.close()
    assert not engine.scheduler.has_unfinished() and engine.runner.num_free_slots == 4
    # Two interleaved generate() iterators share steps and each get their own tokens.
    gen_b = engine.generate(PROMPTS["b"], SamplingParams(seed=SEEDS["b"], max_token_text_ratio=4))
    gen_c = engine.generate(PROMPTS["c"], SamplingParams(seed=SEEDS["c"], max_token_text_ratio=4))
    got_b, got_c = [next(gen_b)], [next(gen_c)]
    got_b += list(gen_b)
    got_c += list(gen_c)
    assert (got_b, got_c) == (_solo(tiny_lm, "b"), _solo(tiny_lm, "c"))


def _model_with_head_bias(model, bias: dict[int, float]):
    """A copy whose speech head ignores the input: uniform except the given ids."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.llm_decoder.weight.zero_()
        model.llm_decoder.bias.zero_()
        for token, value in bias.items():
            model.llm_decoder.bias[token] = value
    return model


def test_eos_is_masked_until_min_len_then_stops(tiny_lm) -> None:
    model = _model_with_head_bias(tiny_lm, {tiny_lm.eos_token: 50.0})
    outputs = _drain_one(model, PROMPTS["a"], SamplingParams(seed=0))  # N=4: min_len 8
    assert len(_tokens(outputs)) == 8
    assert outputs[-1] == StepOutput("r", None, True, "stop")
    assert tiny_lm.eos_token not in _tokens(outputs)


def test_other_stop_ids_stop_even_before_min_len(tiny_lm) -> None:
    # Upstream masks only EOS (6561) before min_len; 6562/6563 still end the request.
    model = _model_with_head_bias(tiny_lm, {tiny_lm.eos_token + 1: 50.0})
    outputs = _drain_one(model, PROMPTS["a"], SamplingParams(seed=0))
    assert outputs == [StepOutput("r", None, True, "stop")]


def test_max_len_and_max_model_len_finish_with_length(tiny_lm) -> None:
    no_stop = {tiny_lm.eos_token + i: -1e4 for i in range(3)}
    model = _model_with_head_bias(tiny_lm, no_stop)
    outputs = _drain_one(model, PROMPTS["a"], SamplingParams(seed=0, max_token_text_ratio=3))
    assert len(_tokens(outputs)) == 12 and outputs[-1].finish_reason == "length"
    # 6 prompt positions, 10 in the cache: the last of 5 tokens needs no position.
    outputs = _drain_one(model, PROMPTS["a"], SamplingParams(seed=0), max_model_len=10)
    assert len(_tokens(outputs)) == 5 and outputs[-1].finish_reason == "length"


def _drain_one(model, prompt, params: SamplingParams, max_model_len: int = 128) -> list[StepOutput]:
    engine = _engine(model, max_model_len=max_model_len)
    engine.add_request("r", prompt, params)
    return _drain(engine)["r"]


def test_bad_requests_are_rejected_with_typed_errors(tiny_lm) -> None:
    engine = _engine(tiny_lm, max_model_len=8)
    with pytest.raises(PromptError, match="max_model_len"):
        engine.add_request("x", PROMPTS["c"])
    with pytest.raises(RequestError, match="request_id"):
        engine.add_request("", PROMPTS["a"])
    with pytest.raises(RequestError, match="max_token_text_ratio"):
        engine.add_request("x", PROMPTS["a"], SamplingParams(max_token_text_ratio=0.1, min_token_text_ratio=0))
    engine.add_request("x", PROMPTS["a"])
    with pytest.raises(SchedulerError, match="'x'"):
        engine.add_request("x", PROMPTS["a"])
