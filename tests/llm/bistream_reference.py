"""An oracle for text-in streaming: upstream `Qwen2LM.inference_bistream` semantics (v2, HF
path), written out step by step over the reference module's own layers, with upstream's
`sampling_ids` (EOS masked in place) and RAS on the global RNG after `torch.manual_seed`.

The vendored package's `inference_bistream` is an older variant (no initial next_fill_index,
re-draws instead of masking EOS), so, as for `reference_decode`, it is not the oracle.
`max_len` only bounds the final loop (upstream has no bound) so a test cannot hang; the
tests check that EOS, not the bound, ended the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BistreamTrace:
    tokens: list[int] = field(default_factory=list)  # as yielded (FILL never yielded)
    fills: list[int] = field(default_factory=list)  # output indices (FILL included) of each FILL
    stopped_by_eos: bool = False
    final_steps: int = 0  # decode steps after the end of text


@torch.inference_mode()
def reference_bistream(
    model: nn.Module,
    pieces: list[list[int]],
    prompt_text: list[int],
    prompt_speech: list[int],
    seed: int,
    max_len: int = 2000,
) -> BistreamTrace:
    torch.manual_seed(seed)
    size = model.speech_token_size
    fill, eos = size + 2, size
    n_text, n_speech = model.mix_ratio
    embed_text = model.llm.model.model.embed_tokens
    sos = model.llm_embedding.weight[0].reshape(1, 1, -1)
    task_id = model.llm_embedding.weight[1].reshape(1, 1, -1)
    hidden = sos.shape[-1]

    def text_emb(ids: list[int]) -> torch.Tensor:
        return embed_text(torch.tensor([ids], dtype=torch.long)) if ids else torch.zeros(1, 0, hidden)

    speech_left = (model.speech_embedding(torch.tensor([prompt_speech], dtype=torch.long))
                   if prompt_speech else torch.zeros(1, 0, hidden))
    trace = BistreamTrace()
    out: list[int] = []  # upstream out_tokens: every id, FILL included
    state = {"cache": None}

    def step(x: torch.Tensor) -> torch.Tensor:
        cache = state["cache"]
        total = x.shape[1] + (0 if cache is None else cache[0][0].size(2))
        masks = torch.tril(torch.ones((1, total, total))).to(torch.bool)
        y, state["cache"] = model.llm.forward_one_step(x, masks=masks, cache=cache)
        return model.llm_decoder(y[:, -1]).log_softmax(dim=-1).squeeze(0)

    lm_input = sos
    cache_text = text_emb(prompt_text)
    next_fill = (len(prompt_speech) // n_speech + 1) * n_speech - len(prompt_speech)
    for piece in pieces:
        cache_text = torch.cat([cache_text, text_emb(piece)], dim=1)
        while speech_left.shape[1] and cache_text.shape[1] >= n_text:
            lm_input = torch.cat([lm_input, cache_text[:, :n_text], speech_left[:, :n_speech]], dim=1)
            cache_text, speech_left = cache_text[:, n_text:], speech_left[:, n_speech:]
        if speech_left.shape[1]:
            continue
        after_fill = bool(out) and out[-1] == fill
        if after_fill or (not out and lm_input.shape[1] == 1):
            if cache_text.shape[1] < n_text:
                continue
            head = cache_text[:, :n_text]
            lm_input = head if after_fill else torch.cat([lm_input, head], dim=1)
            cache_text = cache_text[:, n_text:]
        while True:
            scores = step(lm_input)
            if len(out) == next_fill:
                token = fill
                next_fill += n_speech + 1
            else:
                scores[eos] = -float("inf")
                token = model.sampling(scores, out, 25)
            if token == fill:
                next_fill = len(out) + n_speech + 1
                trace.fills.append(len(out))
            out.append(token)
            if token == fill:
                break
            assert token < size, f"the reference raises on token {token}"
            trace.tokens.append(token)
            lm_input = model.speech_embedding.weight[token].reshape(1, 1, -1)
    lm_input = torch.cat([lm_input, cache_text, task_id], dim=1)
    for _ in range(max_len):
        trace.final_steps += 1
        token = model.sampling(step(lm_input), out, 25)
        out.append(token)
        if token == eos:
            trace.stopped_by_eos = True
            break
        assert token < size, f"the reference raises on token {token}"
        trace.tokens.append(token)
        lm_input = model.speech_embedding.weight[token].reshape(1, 1, -1)
    return trace
