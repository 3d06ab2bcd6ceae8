"""Decode token chunks of several streams in one flow call (sync; the runner and the library use it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from services.common.errors import InvalidRequest
from services.flow.api import VoicePrompt
from services.flow.incremental import IncrementalFlow, decode_streams

MEL_BINS = 80
SPEAKER_EMBED_DIM = 192


@dataclass
class FlowSession:
    """One request's flow state: its voice, every token so far, and how far mel was emitted."""

    prompt_tokens: torch.Tensor  # int64 [P]
    prompt_mel: torch.Tensor  # float32 [2P, 80]
    embedding: torch.Tensor  # float32 [192]
    tokens: list[int] = field(default_factory=list)
    token_offset: int = 0
    # The stream's flow caches when non-final chunks run incrementally; None: re-run the prefix.
    incremental: IncrementalFlow | None = None


def speaker_session(embedding: torch.Tensor) -> FlowSession:
    """A preset speaker's session (sft): no prompt tokens or mel, just the x-vector."""
    return FlowSession(torch.zeros(0, dtype=torch.long), torch.zeros(0, MEL_BINS), embedding)


def prompt_session(prompt: VoicePrompt, token_mel_ratio: int, speech_token_size: int) -> FlowSession:
    """A session conditioned on a prompt recording; malformed prompts are InvalidRequest."""
    tokens = np.asarray(prompt.prompt_tokens)
    mel = np.asarray(prompt.prompt_mel)
    embedding = np.asarray(prompt.speaker_embedding)
    if tokens.ndim != 1 or ((tokens < 0) | (tokens >= speech_token_size)).any():
        raise InvalidRequest(f"prompt.prompt_tokens: must be a vector of ids in [0, {speech_token_size})")
    if mel.shape != (token_mel_ratio * tokens.size, MEL_BINS):
        raise InvalidRequest(
            f"prompt.prompt_mel: shape {list(mel.shape)}, expected [{token_mel_ratio * tokens.size}, {MEL_BINS}] "
            f"({token_mel_ratio} frames per prompt token)"
        )
    if embedding.shape != (SPEAKER_EMBED_DIM,) or not np.isfinite(embedding).all() or not np.isfinite(mel).all():
        raise InvalidRequest(f"prompt: speaker_embedding must be [{SPEAKER_EMBED_DIM}] and all values finite")
    return FlowSession(
        torch.from_numpy(tokens.astype(np.int64)),
        torch.from_numpy(mel.astype(np.float32)),
        torch.from_numpy(embedding.astype(np.float32)),
    )


@dataclass(frozen=True)
class ChunkJob:
    session: FlowSession
    tokens: tuple[int, ...]  # snapshots: a batch runs on another thread than the stream
    offset: int
    finalize: bool


@torch.inference_mode()
def decode_chunk_batch(flow: torch.nn.Module, jobs: list[ChunkJob]) -> list[np.ndarray]:
    """Per job, the mel frames [80, n] of tokens[offset:] (minus the look-ahead unless final).

    Non-final chunks use chunked attention with the look-ahead as right context, the final
    one full attention (upstream passes streaming=True only with finalize=False).
    """
    parameter = next(flow.parameters())
    device, dtype = parameter.device, parameter.dtype
    ratio = int(flow.token_mel_ratio)
    batch = len(jobs)
    token_len = torch.tensor([len(j.tokens) for j in jobs])
    prompt_len = torch.tensor([j.session.prompt_tokens.numel() for j in jobs])
    tokens = torch.zeros(batch, int(token_len.max()), dtype=torch.long)
    prompt_tokens = torch.zeros(batch, int(prompt_len.max()), dtype=torch.long)
    prompt_mel = torch.zeros(batch, prompt_tokens.size(1) * ratio, MEL_BINS)
    for i, job in enumerate(jobs):
        tokens[i, : len(job.tokens)] = torch.tensor(job.tokens, dtype=torch.long)
        prompt_tokens[i, : prompt_len[i]] = job.session.prompt_tokens
        prompt_mel[i, : prompt_len[i] * ratio] = job.session.prompt_mel
    finalize = [j.finalize for j in jobs]
    mel = flow.inference(
        token=tokens.to(device),
        token_len=token_len.to(device),
        prompt_token=prompt_tokens.to(device),
        prompt_token_len=prompt_len.to(device),
        prompt_feat=prompt_mel.to(device, dtype),
        prompt_feat_len=(prompt_len * ratio).to(device),
        embedding=torch.stack([j.session.embedding for j in jobs]).to(device, dtype),
        streaming=[not f for f in finalize],
        finalize=finalize,
    )
    lengths = flow.output_lengths(token_len, prompt_len, prompt_len * ratio, finalize)
    mel = mel.float().cpu()
    return [mel[i, :, job.offset * ratio : int(lengths[i])].numpy().copy() for i, job in enumerate(jobs)]


def decode_incremental(flow: torch.nn.Module, jobs: list[ChunkJob], states: list[IncrementalFlow]) -> list[np.ndarray]:
    """Jobs of different streams from their caches (states[i] is jobs[i]'s), the ODE windows as
    one batch: for non-final jobs the same frames as decode_chunk_batch up to float rounding; a
    final job keeps the chunk masks (an approximation of the full-attention final, see
    IncrementalFlow.decode). A failure leaves the caches half-updated, so those streams drop
    them and their later chunks take the full path."""
    ratio = int(flow.token_mel_ratio)
    items = []
    for job, state in zip(jobs, states):
        prompt = job.session.prompt_tokens
        tokens = torch.cat([prompt, torch.tensor(job.tokens, dtype=torch.long)])
        items.append((state, tokens, (prompt.numel() + job.offset) * ratio, job.finalize))
    try:
        return decode_streams(items)
    except BaseException:
        for job, state in zip(jobs, states):
            if job.session.incremental is state:
                job.session.incremental = None
        raise
