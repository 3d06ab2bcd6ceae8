"""LLM decode speed, ours vs the reference, at full CosyVoice 2 shapes (random weights).

    python -m scripts.bench_core.llm --steps 20 --threads 2

Qwen2-0.5B backbone (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936)
with the CosyVoice 2 speech head (6561 + 3). Both models share one set of weights; both
prefill the same ~150-position prompt, warm up, then decode the same token sequence one
step at a time, the two timed alternately so machine noise hits both alike. A step is what
the decode loop computes per token, sampling excluded: the reference's `forward_one_step`
(HF Qwen2 + DynamicCache, with its per-step mask) + llm_decoder + log_softmax, and ours
(KV-cache plan + our Qwen2 + llm_decoder + log_softmax).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from services.common.modeldir.layout import QWEN_DIR, ModelDir
from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.loader import build_llm
from services.llm.model.prompt import build_prompt
from tests.reference.llm import build_reference_qwen2lm, reference_lm_input

TINY_YAML = Path(__file__).resolve().parents[2] / "services" / "tinymodel" / "cosyvoice2_tiny.yaml"
QWEN2_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def _full_size_model_dir(root: Path) -> ModelDir:
    """The tiny yaml's llm node (identical to CosyVoice2-0.5B's) at 896 wide, + Qwen2-0.5B."""
    text = TINY_YAML.read_text(encoding="utf-8")
    for key in ("llm_input_size", "llm_output_size"):
        text = text.replace(f"{key}: 64", f"{key}: 896")
    (root / QWEN_DIR).mkdir(parents=True)
    (root / "cosyvoice2.yaml").write_text(text, encoding="utf-8")
    (root / QWEN_DIR / "config.json").write_text(json.dumps(QWEN2_05B), encoding="utf-8")
    return ModelDir.open(root)


def _models() -> tuple[torch.nn.Module, CosyVoice2LM]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _full_size_model_dir(Path(tmp))
        torch.manual_seed(0)
        reference = build_reference_qwen2lm(model_dir)
        with torch.device("meta"):
            ours = build_llm(model_dir)
    # Same tensors as the reference (assign): no second 2 GB copy.
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.reset_non_persistent_state()
    return reference, ours.eval()


def bench_llm(num_steps: int, threads: int, prompt_positions: int = 150, warmup_steps: int = 3) -> dict:
    """Milliseconds per decode step at ~prompt_positions context: reference, ours, ratio."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference, ours = _models()
        # A zero-shot-like prompt: 20 prompt-text + 30 text ids, the rest prompt speech.
        text_ids = list(range(1000, 1050))
        speech = [(7 * i) % 6561 for i in range(prompt_positions - len(text_ids) - 2)]
        prompt = build_prompt("zero_shot", text_ids[20:], prompt_text_ids=text_ids[:20],
                              prompt_speech_tokens=speech)
        tokens = [(97 * i + 5) % 6561 for i in range(warmup_steps + num_steps)]
        cache = ours.new_kv_cache(num_slots=1, max_model_len=prompt.num_positions + len(tokens) + 1)
        ref_times: list[float] = []
        our_times: list[float] = []
        with torch.inference_mode():
            lm_input = reference_lm_input(reference, list(prompt.text_ids), list(prompt.speech_tokens))
            ref_cache = None
            x = lm_input

            def reference_step(x: torch.Tensor) -> torch.Tensor:
                nonlocal ref_cache
                masks = torch.tril(torch.ones((1, x.shape[1], x.shape[1]))).to(torch.bool)
                y, ref_cache = reference.llm.forward_one_step(x, masks=masks, cache=ref_cache)
                return reference.llm_decoder(y[:, -1]).log_softmax(dim=-1)

            def our_step(x: torch.Tensor, start: int) -> torch.Tensor:
                plan = cache.plan([0], [start], [x.shape[1]])
                return ours.log_probs(ours(x, plan, cache)[:, -1])

            ref_logp = reference_step(lm_input)
            our_logp = our_step(ours.embed_prompt(prompt)[None], 0)
            max_diff = float((ref_logp - our_logp).abs().max())
            position = prompt.num_positions
            for i, token in enumerate(tokens):
                x = reference.speech_embedding.weight[token].reshape(1, 1, -1)
                start = time.perf_counter()
                ref_logp = reference_step(x)
                ref_elapsed = time.perf_counter() - start
                start = time.perf_counter()
                our_logp = our_step(ours.embed_speech_tokens(torch.tensor([token]))[None], position)
                our_elapsed = time.perf_counter() - start
                position += 1
                max_diff = max(max_diff, float((ref_logp - our_logp).abs().max()))
                if i >= warmup_steps:
                    ref_times.append(ref_elapsed)
                    our_times.append(our_elapsed)
        reference_ms = statistics.median(ref_times) * 1e3
        ours_ms = statistics.median(our_times) * 1e3
        return {
            "threads": threads,
            "num_steps": num_steps,
            "context_positions": prompt.num_positions,
            "reference_ms_per_step": reference_ms,
            "ours_ms_per_step": ours_ms,
            "ratio_ours_over_reference": ours_ms / reference_ms,
            "reference_mean_ms_per_step": statistics.fmean(ref_times) * 1e3,
            "ours_mean_ms_per_step": statistics.fmean(our_times) * 1e3,
            "max_abs_logprob_diff": max_diff,
        }
    finally:
        torch.set_num_threads(previous_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-positions", type=int, default=150)
    options = parser.parse_args()
    print(json.dumps(bench_llm(options.steps, options.threads, options.prompt_positions), indent=2))


if __name__ == "__main__":
    main()
