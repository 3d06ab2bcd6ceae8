"""The model and engine on a CUDA device: same log-probs as on CPU, same tokens per seed
(sampling always runs on CPU), and a bf16 engine that runs. Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from services.llm.engine.config import EngineConfig
from services.llm.engine.llm_engine import LLMEngine
from services.llm.model.loader import build_llm
from services.llm.model.prompt import build_prompt
from services.llm.model.sampling import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = [
    build_prompt("sft", list(range(40, 52))),
    build_prompt("zero_shot", list(range(60, 70)), prompt_text_ids=[5, 6], prompt_speech_tokens=[9, 99, 999]),
    build_prompt("instruct2", list(range(80, 85)), instruct_text_ids=[1, 2, 3]),
]


@pytest.fixture
def cpu_model(new_model_dir):
    torch.manual_seed(0)
    model = build_llm(new_model_dir())
    with torch.no_grad():
        model.llm_decoder.weight.mul_(6.0)  # a peaked head: exercises top-p and RAS
    return model


def _run(model, seeds: list[int]) -> dict[str, list[int]]:
    engine = LLMEngine(model, EngineConfig(max_num_seqs=4, max_model_len=512))
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        engine.add_request(str(i), prompt, SamplingParams(seed=seed, max_token_text_ratio=3))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.token is not None:
                tokens.setdefault(out.request_id, []).append(out.token)
    return tokens


def _step_log_probs(model, prompt, tokens: list[int]) -> torch.Tensor:
    device = model.llm_decoder.weight.device
    cache = model.new_kv_cache(num_slots=1, max_model_len=prompt.num_positions + len(tokens) + 1)
    rows = []
    with torch.inference_mode():
        x = model.embed_prompt(prompt)[None]
        start = 0
        for token in [None, *tokens]:
            if token is not None:
                x = model.embed_speech_tokens(torch.tensor([token], device=device))[None]
            rows.append(model.log_probs(model(x, cache.plan([0], [start], [x.shape[1]]), cache)[:, -1]))
            start += x.shape[1]
    return torch.cat(rows).float().cpu()


def test_cuda_float32_matches_cpu(cpu_model) -> None:
    cuda_model = copy.deepcopy(cpu_model).cuda()
    tokens = [(37 * i) % 6561 for i in range(24)]
    diff = (_step_log_probs(cuda_model, PROMPTS[1], tokens) - _step_log_probs(cpu_model, PROMPTS[1], tokens))
    assert diff.abs().max().item() <= 1e-4
    assert _run(cuda_model, [1, 2, 3]) == _run(cpu_model, [1, 2, 3])


def test_cuda_bfloat16_engine_runs(cpu_model) -> None:
    bf16 = copy.deepcopy(cpu_model).to("cuda", torch.bfloat16)
    tokens = _run(bf16, [4, 5, 6])
    assert set(tokens) == {"0", "1", "2"}
    assert all(0 <= t < 6561 for seq in tokens.values() for t in seq)
    reference = _step_log_probs(cpu_model, PROMPTS[0], tokens["0"][:10])
    diff = (_step_log_probs(bf16, PROMPTS[0], tokens["0"][:10]) - reference).abs().max().item()
    assert diff < 0.5  # bf16 rounding only, not a wrong computation
