"""The reference `Qwen2LM`, built from our parsed yaml + Qwen config (no hub), and an oracle
decode loop with UPSTREAM semantics driving the reference module's own layers.

The vendored package's `Qwen2LM.inference` deviates from upstream (it re-draws instead of
masking EOS, masks EOS at step 0, feeds 6562/6563 back instead of stopping), so it is never
used as the oracle; `reference_decode` follows upstream `Qwen2LM.inference_wrapper` (HF path)
and `TransformerLM.sampling_ids`.

The vendored `ras_sampling` deviates too: its repetition fallback redraws without masking
the repeated token (upstream sets it to -inf first). `upstream_ras_sampling` therefore
composes the reference's own `nucleus_sampling` and `random_sampling` (unchanged from
upstream apart from returning tensors) with upstream's masking step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from services.common.modeldir.layout import ModelDir
from tests.reference import ref


def build_reference_qwen2lm(model_dir: ModelDir) -> nn.Module:
    """`cosyvoice.llm.llm.Qwen2LM` with a `Qwen2Encoder` whose HF model is built in memory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm_module = ref("cosyvoice.llm.llm")
    node = model_dir.stage_config("llm")
    # Qwen2Encoder.__init__ only calls from_pretrained(path); attach the model instead.
    encoder = llm_module.Qwen2Encoder.__new__(llm_module.Qwen2Encoder)
    nn.Module.__init__(encoder)
    config = Qwen2Config(**model_dir.qwen_config)
    config._attn_implementation = "sdpa"
    encoder.model = Qwen2ForCausalLM(config)
    sampling = functools.partial(upstream_ras_sampling, **node["sampling"].kwargs)
    model = llm_module.Qwen2LM(
        llm_input_size=node["llm_input_size"],
        llm_output_size=node["llm_output_size"],
        speech_token_size=node["speech_token_size"],
        llm=encoder,
        sampling=sampling,
        length_normalized_loss=node.get("length_normalized_loss", True),
        lsm_weight=node.get("lsm_weight", 0.0),
        mix_ratio=node.get("mix_ratio", [5, 15]),
    )
    return model.eval()


def upstream_ras_sampling(
    weighted_scores: torch.Tensor,
    decoded_tokens: list[int],
    sampling: int = 25,
    top_p: float = 0.8,
    top_k: int = 25,
    win_size: int = 10,
    tau_r: float = 0.1,
) -> int:
    """Upstream RAS on the global RNG: nucleus draw; a token repeated in the window is
    masked in place and redrawn from the full softmax."""
    common = ref("cosyvoice.utils.common")
    top_id = int(common.nucleus_sampling(weighted_scores, top_p=top_p, top_k=top_k))
    window = torch.tensor(decoded_tokens[-win_size:], dtype=torch.long)
    if (window == top_id).sum().item() >= win_size * tau_r:
        weighted_scores[top_id] = -float("inf")
        top_id = int(common.random_sampling(weighted_scores, decoded_tokens, sampling))
    return top_id


def reference_lm_input(
    model: nn.Module, text_ids: list[int], speech_tokens: list[int]
) -> torch.Tensor:
    """Upstream `Qwen2LM.inference` step 3: [SOS, E_t(text), TASK_ID, E_s(prompt speech)]."""
    text = torch.tensor([text_ids], dtype=torch.long)
    text_emb = model.llm.model.model.embed_tokens(text)
    sos = model.llm_embedding.weight[0].reshape(1, 1, -1)
    task_id = model.llm_embedding.weight[1].reshape(1, 1, -1)
    if speech_tokens:
        speech = model.speech_embedding(torch.tensor([speech_tokens], dtype=torch.long))
    else:
        speech = torch.zeros(1, 0, text_emb.shape[-1], dtype=text_emb.dtype)
    return torch.cat([sos, text_emb, task_id, speech], dim=1)


@dataclass
class ReferenceDecode:
    tokens: list[int]
    log_probs: list[torch.Tensor]  # per step, before the EOS mask, [speech_token_size + 3]
    stopped_by: int | None  # the stop id sampled, or None when max_len was reached


@torch.inference_mode()
def reference_decode(
    model: nn.Module, lm_input: torch.Tensor, min_len: int, max_len: int, seed: int
) -> ReferenceDecode:
    """Upstream's HF decode loop, RAS via the reference's `ras_sampling` on the global RNG."""
    torch.manual_seed(seed)
    out_tokens: list[int] = []
    log_probs: list[torch.Tensor] = []
    stop_ids = [model.speech_token_size + i for i in range(3)]
    cache = None
    x = lm_input
    for i in range(max_len):
        masks = torch.tril(torch.ones((1, x.shape[1], x.shape[1]), device=x.device)).to(torch.bool)
        y_pred, cache = model.llm.forward_one_step(x, masks=masks, cache=cache)
        logp = model.llm_decoder(y_pred[:, -1]).log_softmax(dim=-1)
        log_probs.append(logp[0].clone())
        scores = logp.squeeze(dim=0)
        if i < min_len:  # upstream sampling_ids(ignore_eos=True): mask EOS only
            scores[model.speech_token_size] = -float("inf")
        top_id = model.sampling(scores, out_tokens, 25)
        if top_id in stop_ids:
            return ReferenceDecode(out_tokens, log_probs, top_id)
        out_tokens.append(top_id)
        x = model.speech_embedding.weight[top_id].reshape(1, 1, -1)
    return ReferenceDecode(out_tokens, log_probs, None)
