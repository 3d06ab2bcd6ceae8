"""Static decode at fixed batch sizes (the CUDA-graph path): buckets, padding into a scratch
slot, and the same tokens as the plain decode path; the real capture only with a GPU."""

from __future__ import annotations

import pytest
import torch

from services.llm.engine.config import EngineConfig, EngineConfigError
from services.llm.engine.decode_graphs import DecodeGraphs, bucket_sizes
from services.llm.engine.llm_engine import LLMEngine
from services.llm.model.prompt import build_prompt
from services.llm.model.sampling import SamplingParams

PROMPTS = [
    build_prompt("sft", [40, 41, 42, 43]),
    build_prompt("zero_shot", [50, 51, 52, 53, 54], prompt_text_ids=[5, 6], prompt_speech_tokens=[100, 200, 300]),
    build_prompt("instruct2", [60, 61, 62, 63, 64, 65], instruct_text_ids=[1, 2, 3]),
    build_prompt("sft", [70, 71, 72]),
    build_prompt("sft", [80, 81, 82, 83, 84, 85, 86, 87]),
]


def _run(model, decode_graphs: str, graph_max_batch: int = 0) -> tuple[dict[str, list[int]], list[int]]:
    """Tokens per request, and the decode batch sizes seen; requests join while others run,
    so batches of 1..5 rows with mixed positions (masked attention) all occur."""
    config = EngineConfig(max_num_seqs=6, max_model_len=96, decode_graphs=decode_graphs,
                          graph_max_batch=graph_max_batch)
    engine = LLMEngine(model, config)
    assert (engine.runner.graphs is None) == (decode_graphs == "off")
    sizes: list[int] = []
    forward = engine.runner.forward
    engine.runner.forward = lambda seqs, prefill: (sizes.append(len(seqs)) if not prefill else None) or forward(
        seqs, prefill)
    tokens: dict[str, list[int]] = {}
    step = 0
    while step < 4 * len(PROMPTS) or engine.has_unfinished():
        if step % 4 == 0 and step // 4 < len(PROMPTS):
            i = step // 4
            engine.add_request(str(i), PROMPTS[i], SamplingParams(seed=10 + i, max_token_text_ratio=4))
        for out in engine.step():
            if out.token is not None:
                tokens.setdefault(out.request_id, []).append(out.token)
        step += 1
    assert engine.runner.num_free_slots == 6
    return tokens, sizes


def test_buckets_cover_every_batch_size() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(16) == (1, 2, 4, 8, 16)
    assert bucket_sizes(24) == (1, 2, 4, 8, 16, 24)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        bucket_sizes(0)


def test_padded_static_decode_gives_the_plain_tokens(tiny_lm) -> None:
    plain, sizes = _run(tiny_lm, "off")
    static, static_sizes = _run(tiny_lm, "eager")
    assert static == plain
    assert static_sizes == sizes
    assert {3, 5} & set(sizes)  # batches padded up to the buckets 4 and 6
    assert all(len(v) > 4 for v in plain.values())


def test_batches_above_the_largest_bucket_run_eagerly(tiny_lm) -> None:
    plain, sizes = _run(tiny_lm, "off")
    static, _ = _run(tiny_lm, "eager", graph_max_batch=2)
    assert max(sizes) > 2
    assert static == plain


def test_padding_rows_write_only_the_scratch_slot(tiny_lm) -> None:
    cache = tiny_lm.new_kv_cache(4, 32)
    graphs = DecodeGraphs(tiny_lm, cache, max_batch=4, scratch_slot=3, capture=False)
    before = [k.clone() for k in cache.keys]
    log_probs = graphs.run([7, 8, 9], [0, 2, 1], [5, 3, 4])
    assert log_probs.shape == (3, tiny_lm.speech_token_size + 3)
    for layer, old in zip(cache.keys, before):
        changed = (layer != old).flatten(2).any(-1).any(-1)  # [slots]
        assert changed.tolist() == [True, True, True, True]  # 3 real rows + the padding row
        assert torch.equal(layer[0, :, :5], old[0, :, :5]) and torch.equal(layer[0, :, 6:], old[0, :, 6:])
        assert torch.equal(layer[3, :, 1:], old[3, :, 1:])  # padding wrote position 0 only
    assert graphs.run([1] * 5, [0, 1, 2, 3, 3], [0] * 5) is None  # above the largest bucket


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decode_graphs": "yes"}, "decode_graphs must be one of off, cuda, eager, got 'yes'"),
        ({"graph_max_batch": 9}, r"graph_max_batch must be an integer in \[0, max_num_seqs=8\], got 9"),
        ({"graph_max_batch": -1}, "graph_max_batch must be an integer"),
    ],
)
def test_config_errors_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(EngineConfigError, match=message) as info:
        EngineConfig(max_num_seqs=8, **kwargs)
    assert "\n" not in str(info.value)


def test_cuda_capture_refused_on_cpu(tiny_lm) -> None:
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, the model is on cpu"):
        LLMEngine(tiny_lm, EngineConfig(max_num_seqs=2, max_model_len=64, decode_graphs="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to capture graphs")
def test_cuda_graphs_give_the_eager_cuda_tokens(tiny_lm) -> None:
    import copy

    model = copy.deepcopy(tiny_lm).cuda()
    eager, _ = _run(model, "off")
    graphed, _ = _run(model, "cuda")
    assert graphed == eager


def test_service_setting_turns_graphs_on_for_cuda_only(tmp_path) -> None:
    from services.common.config import load_config
    from services.llm.config import LLMServiceConfig

    cpu = load_config(LLMServiceConfig, ["--model-dir", str(tmp_path)], environ={})
    assert cpu.cuda_graphs is True and cpu.decode_graphs == "off"
    cuda = load_config(LLMServiceConfig, ["--model-dir", str(tmp_path), "--device", "cuda"], environ={})
    assert cuda.decode_graphs == "cuda"
    off = load_config(LLMServiceConfig, ["--model-dir", str(tmp_path), "--device", "cuda"],
                      environ={"COSYVOICE_LLM_CUDA_GRAPHS": "false"})
    assert off.decode_graphs == "off"


def test_service_graph_batch_error_names_the_setting(tmp_path) -> None:
    from services.common.config import ConfigError, load_config
    from services.llm.config import LLMServiceConfig

    with pytest.raises(ConfigError) as error:
        load_config(LLMServiceConfig, ["--model-dir", str(tmp_path), "--max-num-seqs", "4",
                                       "--cuda-graph-max-batch", "8"], environ={})
    assert str(error.value) == (
        "--cuda-graph-max-batch / COSYVOICE_LLM_CUDA_GRAPH_MAX_BATCH must be in 0..max_num_seqs (4) (got 8)"
    )
