"""Bistream in the engine: token parity with upstream `inference_bistream` (oracle in
bistream_reference.py), text pulled only when the LLM waits, batching, abort."""

from __future__ import annotations

import pytest

from services.llm.engine.bistream import FeedState
from services.llm.engine.config import EngineConfig
from services.llm.engine.llm_engine import LLMEngine
from services.llm.model.prompt import build_prompt
from services.llm.model.sampling import SamplingParams
from tests.llm.bistream_reference import reference_bistream

SPEECH = [(i * 37) % 6561 for i in range(40)]


def _pieces(*sizes: int) -> list[list[int]]:
    pieces, first = [], 40
    for n in sizes:
        pieces.append(list(range(first, first + n)))
        first += n
    return pieces


# 6, 2, 2, 0, 9, 3 text tokens: a short piece after a FILL waits, an empty one still counts.
PIECES = _pieces(6, 2, 2, 0, 9, 3)
PROMPTS = {
    "no_prompt": ([], []),
    "zero_shot": (list(range(7, 20)), SPEECH),  # the prompt text covers the 40 prompt tokens
    "zero_shot_short_prompt_text": ([7, 8, 9, 10], SPEECH),  # interleaving spans the pieces
}
# (prompt, seed) where the reference ends by EOS; no_prompt 0-2 sample FILLs in text phases.
CASES = [("no_prompt", 0), ("no_prompt", 1), ("no_prompt", 2), ("no_prompt", 3),
         ("zero_shot", 2), ("zero_shot", 5), ("zero_shot", 8),
         ("zero_shot_short_prompt_text", 0), ("zero_shot_short_prompt_text", 11)]


@pytest.fixture(scope="module")
def bistream_lm(reference_setup_bistream):
    from services.llm.model.loader import load_llm

    return load_llm(reference_setup_bistream[0])


@pytest.mark.parametrize(("prompt", "seed"), CASES)
def test_tokens_equal_the_reference_inference_bistream(reference_setup_bistream, bistream_lm, prompt, seed) -> None:
    _, reference = reference_setup_bistream
    prompt_text, prompt_speech = PROMPTS[prompt]
    expected = reference_bistream(reference, PIECES, prompt_text, prompt_speech, seed)
    assert expected.stopped_by_eos and expected.final_steps >= 3
    engine = LLMEngine(bistream_lm, EngineConfig(max_num_seqs=2, max_model_len=1024))
    pulled: list[int] = []  # tokens seen when each piece was pulled
    tokens: list[int] = []

    def source():
        for piece in PIECES:
            pulled.append(len(tokens))
            yield piece

    for token in engine.generate_bistream(source(), prompt_text, prompt_speech, SamplingParams(seed=seed)):
        tokens.append(token)
    assert tokens == expected.tokens
    assert len(expected.fills) >= 2
    if prompt == "no_prompt" and seed < 3:
        cadence = list(range(15, 15 + 16 * len(expected.fills), 16))
        assert expected.fills != cadence  # some FILL was sampled, not forced
    assert pulled[-1] > 0  # later pieces were pulled only after the LLM produced tokens and a FILL
    assert not engine.has_unfinished() and engine.runner.num_free_slots == 2


def test_bistream_and_normal_requests_batched_keep_their_tokens(bistream_lm) -> None:
    params = SamplingParams(seed=4, max_token_text_ratio=4)
    prompt = build_prompt("sft", list(range(60, 70)))

    def alone_bistream() -> list[int]:
        engine = LLMEngine(bistream_lm, EngineConfig(max_num_seqs=1, max_model_len=512))
        return list(engine.generate_bistream(PIECES, [7, 8], SPEECH[:20], SamplingParams(seed=5)))

    alone_normal = list(LLMEngine(bistream_lm, EngineConfig(max_num_seqs=1)).generate(prompt, params))
    engine = LLMEngine(bistream_lm, EngineConfig(max_num_seqs=3, max_model_len=512))
    batches: list[tuple[int, bool]] = []
    run = engine.runner.run
    engine.runner.run = lambda seqs, prefill: batches.append((len(seqs), prefill)) or run(seqs, prefill)
    bistream = engine.generate_bistream(PIECES, [7, 8], SPEECH[:20], SamplingParams(seed=5))
    normal = engine.generate(prompt, params)
    got_bistream, got_normal = [next(bistream)], [next(normal)]
    while True:  # interleave the two consumers step by step
        a, b = next(bistream, None), next(normal, None)
        if a is not None:
            got_bistream.append(a)
        if b is not None:
            got_normal.append(b)
        if a is None and b is None:
            break
    assert got_bistream == alone_bistream() and got_normal == alone_normal
    assert any(n == 2 and not prefill for n, prefill in batches)  # shared decode steps


def test_abort_while_waiting_for_text_frees_the_slot(tiny_lm) -> None:
    engine = LLMEngine(tiny_lm, EngineConfig(max_num_seqs=2, max_model_len=256))
    engine.add_bistream_request("b", [], [], SamplingParams(seed=1))
    engine.push_text("b", list(range(40, 48)))
    while engine.has_work():
        engine.step()
    seq = engine.scheduler.find("b")
    assert seq is not None and seq.bistream.state is FeedState.WAITING_TEXT and seq.slot is not None
    assert engine.runner.num_free_slots == 1
    assert engine.abort_request("b")
    assert engine.runner.num_free_slots == 2
    assert [o.finish_reason for o in engine.step()] == ["abort"]
    assert not engine.has_unfinished()
