"""One stream's incremental flow: non-final chunks run only over the frames that can still change.

With chunk masks counted from position 0 (the prompt's first token), causal convs and a start
noise fixed per position, a frame whose chunk is complete never changes in a later streaming
call of the same stream. So each non-final call runs the encoder from the first token of the
encoder chunk that was incomplete last time, and the ODE from the first frame of the estimator
chunk that was incomplete last time, reading every layer's view of the frames before (attention
keys/values, causal-conv inputs) from `WindowCache`s: one for the encoder's token stack, one for
its frame stack, one per ODE step for the estimator (both CFG rows). The final call uses full
attention (upstream: streaming=False), which changes every frame, so it is not incremental: the
caller runs it through the plain batched path and drops this object.

The state belongs to one stream (FlowSession.incremental); it is never shared, and dropping the
reference frees it (an in-flight call keeps its own reference until it returns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from services.flow.model.flow import CausalMaskedDiffWithXvec
from services.flow.model.window_cache import WindowCache


def unsupported_reason(flow: CausalMaskedDiffWithXvec) -> str | None:
    """Why this model's streaming calls cannot be cached exactly, or None. A frame is final once
    its estimator chunk is complete only if its encoder output is final too: the encoder must be
    chunked, and estimator chunks must end on encoder chunk ends (CosyVoice 2: 50 = 2 × 25)."""
    encoder_chunk = flow.encoder.config.static_chunk_size
    estimator_chunk = flow.decoder.estimator.config.static_chunk_size
    if encoder_chunk <= 0 or estimator_chunk % (encoder_chunk * flow.encoder.stride) != 0:
        return (f"the estimator's {estimator_chunk}-frame chunks do not end on the encoder's "
                f"{encoder_chunk}-token chunks")
    return None


class IncrementalFlow:
    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        n_timesteps: int,
    ) -> None:
        """prompt_mel: (2P, 80) float32; embedding: (192,) x-vector."""
        parameter = next(flow.parameters())
        self.flow = flow
        self.device, self.dtype = parameter.device, parameter.dtype
        self.lookahead = flow.pre_lookahead_len
        self.stride = flow.encoder.stride
        self.encoder_chunk = flow.encoder.config.static_chunk_size  # tokens (see unsupported_reason)
        self.estimator_chunk = flow.decoder.estimator.config.static_chunk_size  # frames
        with torch.inference_mode():
            self.prompt_mel = prompt_mel.to(self.device, self.dtype).t().unsqueeze(0)  # (1, 80, 2P)
            self.spks = flow.spk_embed_affine_layer(F.normalize(embedding.to(self.device, self.dtype)[None], dim=1))
        self.token_cache = WindowCache()
        self.frame_cache = WindowCache()
        self.step_caches = [WindowCache() for _ in range(n_timesteps)]
        self.token_start = 0  # encoder: tokens before this are in token_cache / frame_cache
        self.frame_start = 0  # estimator: frames before this are in step_caches
        self.mu = torch.zeros(1, flow.config.output_size, 0, device=self.device, dtype=self.dtype)

    def nbytes(self) -> int:
        caches = [self.token_cache, self.frame_cache, *self.step_caches]
        return sum(c.nbytes() for c in caches) + self.mu.numel() * self.mu.element_size()

    def window_frames(self, n_tokens: int, chunked_final: bool = False) -> int:
        """How many frames the ODE window of a call over n_tokens would cover (batch grouping)."""
        main = n_tokens - (0 if chunked_final else self.lookahead)
        return max(main * self.stride - self.frame_start, 0)

    def decode(self, tokens: torch.Tensor, emit_from: int, chunked_final: bool = False) -> np.ndarray:
        """tokens: (n,) int64, prompt tokens then every generated token so far, the last
        `lookahead` of them withheld as look-ahead. Returns the mel [80, T - emit_from] of the
        frames from absolute frame `emit_from` (prompt frames included) to T = stride·(n - lookahead);
        emit_from must not precede the start of the estimator chunk left incomplete last time.

        chunked_final: the last call of the stream, still with chunk masks (zeros as look-ahead,
        T = stride·n). Upstream's final call uses full attention instead, which changes every
        frame; this approximation is measured in docs/incremental-flow.md."""
        return decode_streams([(self, tokens, emit_from, chunked_final)])[0]

    def _prepare(self, tokens: torch.Tensor, emit_from: int, chunked_final: bool) -> _Window:
        """Runs the encoder over this call's token window; returns the ODE's window inputs."""
        main = tokens.numel() - (0 if chunked_final else self.lookahead)
        frames = main * self.stride
        if main < 1 or not self.frame_start <= emit_from <= frames:
            raise ValueError(f"incremental flow: {tokens.numel()} tokens, emit_from {emit_from}, "
                             f"cached frames {self.frame_start}")
        mu = self._encode(tokens.to(self.device), main)  # (1, 80, frames)
        start = self.frame_start
        cond = torch.zeros(mu.size(1), frames - start, device=self.device, dtype=self.dtype)
        prompt_end = min(self.prompt_mel.size(2), frames)
        if prompt_end > start:
            cond[:, : prompt_end - start] = self.prompt_mel[0, :, start:prompt_end]
        stable = frames // self.estimator_chunk * self.estimator_chunk
        return _Window(mu[0, :, start:], cond, start, stable, emit_from)

    def _encode(self, tokens: torch.Tensor, main: int) -> torch.Tensor:
        """mu (1, 80, stride·main) of the encoder: cached frames, then the window's."""
        start = self.token_start
        first = max(0, start - 2)  # see UpsampleConformerEncoder.forward_window
        embedded = self.flow.input_embedding(tokens[first:].long()).unsqueeze(0)
        hidden = self.flow.encoder.forward_window(embedded, start, main, self.token_cache, self.frame_cache)
        stable = main // self.encoder_chunk * self.encoder_chunk
        self.token_cache.commit(stable - start)
        self.frame_cache.commit((stable - start) * self.stride)
        mu = torch.cat([self.mu, self.flow.encoder_proj(hidden).transpose(1, 2)], dim=2)
        self.mu = mu[:, :, : stable * self.stride]
        self.token_start = stable
        return mu


@dataclass(frozen=True)
class _Window:
    mu: torch.Tensor  # (80, W): frames [start, start + W)
    cond: torch.Tensor  # (80, W): the prompt mel over the window, zeros past it
    start: int  # first frame of the window: the estimator caches hold everything before
    stable: int  # frames in complete chunks after this call
    emit_from: int


@torch.inference_mode()
def decode_streams(items: list[tuple[IncrementalFlow, torch.Tensor, int, bool]]) -> list[np.ndarray]:
    """Chunks of several streams (state, tokens, emit_from, chunked_final; one item per stream):
    each stream's encoder window alone (their relative positions start at different offsets),
    then their ODE windows as one batch. On failure every state in `items` is half-updated."""
    windows = [state._prepare(tokens, emit_from, final) for state, tokens, emit_from, final in items]
    states = [item[0] for item in items]
    mels = states[0].flow.decoder.forward_windows(
        [w.mu for w in windows], [s.spks[0] for s in states], [w.cond for w in windows], [w.start for w in windows],
        [s.step_caches for s in states], [w.stable - w.start for w in windows],
    )
    out = []
    for state, window, mel in zip(states, windows, mels):
        state.frame_start = window.stable
        out.append(mel[:, window.emit_from - window.start :].cpu().numpy().copy())
    return out
