"""Flow runner: per-stream sessions, cross-request batching, the streaming slice by token offset.

With `incremental`, a non-final chunk runs only over what its stream's caches do not hold yet
(services/flow/incremental.py; docs/incremental-flow.md). Otherwise, and for the final chunk,
it re-runs the flow over prompt + every token so far with chunked attention
and keeps only the frames past the session's offset (upstream token2wav: `mel[:, :, offset*2:]`);
the last `pre_lookahead_len` tokens are look-ahead and are decoded again with the next chunk.
The final chunk uses full attention. Chunks of concurrent streams that are waiting at the
same time run as one padded batch (per-item streaming/finalize flags).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import numpy as np
import torch

from services.common.batching import Batcher, length_buckets
from services.common.errors import InvalidRequest, Overloaded
from services.common.malloc_tuning import HeapTrimmer
from services.flow.api import MelChunkResult, VoicePrompt
from services.flow.chunk_decoder import (
    MEL_BINS,
    ChunkJob,
    FlowSession,
    decode_chunk_batch,
    decode_incremental,
    prompt_session,
    speaker_session,
)
from services.flow.incremental import IncrementalFlow, unsupported_reason
from services.flow.metrics import FlowMetrics
from services.flow.model.config import REFERENCE_N_TIMESTEPS
from services.flow.speakers import SpeakerTable

logger = logging.getLogger(__name__)


class FlowRunner:
    def __init__(
        self,
        flow: torch.nn.Module,
        speakers: SpeakerTable,
        metrics: FlowMetrics,
        max_batch_size: int = 8,
        max_wait_seconds: float = 0.0,
        max_padding_ratio: float = 1.2,
        nice_increment: int = 0,
        max_sessions: int = 128,
        incremental: bool = False,
        incremental_cache_bytes: int = 4 << 30,
        chunked_final: bool = False,
    ) -> None:
        self.flow = flow
        # Non-final chunks from per-stream caches (docs/incremental-flow.md). The caches run the
        # torch estimator, so an exported-graph backend keeps the full re-run instead.
        if incremental and getattr(flow.decoder, "backend", None) is not None:
            logger.info("flow: incremental streaming is off: it needs the torch estimator backend")
            incremental = False
        if incremental and (reason := unsupported_reason(flow)) is not None:
            logger.info("flow: incremental streaming is off: %s", reason)
            incremental = False
        self.incremental = incremental
        self.incremental_cache_bytes = incremental_cache_bytes
        self.chunked_final = chunked_final  # approximate: the final chunk keeps chunk masks and caches
        self.incremental_states: weakref.WeakSet[IncrementalFlow] = weakref.WeakSet()
        self._states_lock = threading.Lock()  # streams open on the loop while the batch thread sums
        self.max_sessions = max_sessions
        self.max_padding_ratio = max_padding_ratio
        self.speakers = speakers
        self.metrics = metrics
        self.speech_token_size = int(flow.input_embedding.num_embeddings)
        self.lookahead = int(flow.pre_lookahead_len)
        self.ratio = int(flow.token_mel_ratio)
        self.max_frames = int(flow.decoder.max_frames)
        parameter = next(flow.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.num_sessions = 0
        self._batcher: Batcher[ChunkJob, np.ndarray] = Batcher(
            self._run_batch, max_batch_size, max_wait_seconds, name="flow", on_batch=self._observe_batch,
            nice_increment=nice_increment, trimmer=HeapTrimmer(),
        )

    def incremental_bytes(self) -> int:
        """What the flow caches of all open streams hold."""
        with self._states_lock:
            states = list(self.incremental_states)
        return sum(state.nbytes() for state in states)

    def _observe_batch(self, size: int, seconds: float) -> None:
        # Through self.metrics, not bound at construction: the server swaps the warm-up's
        # scratch metrics for the served ones.
        self.metrics.observe_batch(size, seconds)

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    def open_session(self, speaker_id: str | None, prompt: VoicePrompt | None) -> FlowSession:
        # Checked before the prompt is copied: each session holds its prompt and all its tokens.
        if self.num_sessions >= self.max_sessions:
            raise Overloaded(f"flow: {self.num_sessions} sessions are open (max_sessions); retry later")
        if prompt is not None and prompt.prompt_tokens.size * self.ratio > self.max_frames:
            # Before the copy: a prompt past the flow's frame limit could never decode a chunk.
            raise InvalidRequest(
                f"prompt.prompt_tokens: {prompt.prompt_tokens.size} tokens make "
                f"{prompt.prompt_tokens.size * self.ratio} mel frames, over the flow's limit of {self.max_frames}"
            )
        if prompt is None:
            session = speaker_session(self.speakers.embedding(speaker_id))
        else:
            session = prompt_session(prompt, self.ratio, self.speech_token_size)
        if self.incremental:
            session.incremental = IncrementalFlow(self.flow, session.prompt_mel, session.embedding,
                                                  REFERENCE_N_TIMESTEPS)
            with self._states_lock:
                self.incremental_states.add(session.incremental)
        self.num_sessions += 1
        self.metrics.streams.set(self.num_sessions)
        return session

    def close_session(self, session: FlowSession) -> None:
        session.incremental = None  # an in-flight chunk holds its own reference until it returns
        self.num_sessions -= 1
        self.metrics.streams.set(self.num_sessions)
        if self.incremental:
            self.metrics.incremental_cache.set(self.incremental_bytes())

    async def decode(self, session: FlowSession, tokens: list[int], finalize: bool) -> MelChunkResult:
        total_frames = (session.prompt_tokens.numel() + len(session.tokens) + len(tokens)) * self.ratio
        if total_frames > self.max_frames:  # before touching the tokens: a huge chunk costs nothing
            raise InvalidRequest(
                f"chunk.tokens: prompt + {len(session.tokens) + len(tokens)} tokens make {total_frames} mel "
                f"frames, over the flow's limit of {self.max_frames}"
            )
        if any(not 0 <= t < self.speech_token_size for t in tokens):
            raise InvalidRequest(f"chunk.tokens: ids must be in [0, {self.speech_token_size})")
        session.tokens.extend(tokens)
        emit_end = len(session.tokens) if finalize else len(session.tokens) - self.lookahead
        started = time.perf_counter()
        if emit_end <= session.token_offset:  # nothing new completed (or an empty utterance)
            mel = np.zeros((MEL_BINS, 0), np.float32)
        else:
            self.metrics.queue_depth.inc()
            try:
                job = ChunkJob(session, tuple(session.tokens), session.token_offset, finalize)
                mel = await self._batcher.submit(job)
            finally:
                self.metrics.queue_depth.dec()
            session.token_offset = emit_end
        if finalize:
            session.incremental = None
        elapsed = time.perf_counter() - started
        self.metrics.chunk_duration.observe(elapsed)
        self.metrics.frames.inc(mel.shape[1])
        return MelChunkResult(mel, session.token_offset, elapsed)

    def _run_batch(self, jobs: list[ChunkJob]) -> list[np.ndarray]:
        results: list[np.ndarray] = [np.empty(0)] * len(jobs)
        full, incremental = [], []
        for index, job in enumerate(jobs):
            state = job.session.incremental
            if state is not None and (not job.finalize or self.chunked_final):
                incremental.append((index, state))
            else:
                full.append(index)
        # Windows padded to the widest in a group: group them like the full path's lengths.
        widths = [state.window_frames(jobs[i].session.prompt_tokens.numel() + len(jobs[i].tokens),
                                      jobs[i].finalize) for i, state in incremental]
        for group in length_buckets(widths, self.max_padding_ratio):
            members = [incremental[g] for g in group]
            mels = decode_incremental(self.flow, [jobs[i] for i, _ in members], [state for _, state in members])
            for (index, state), mel in zip(members, mels):
                results[index] = mel
        for index, state in incremental:
            if jobs[index].session.incremental is state and self.incremental_bytes() > self.incremental_cache_bytes:
                jobs[index].session.incremental = None  # over the budget: this stream re-runs its prefix from now
        if incremental:
            self.metrics.incremental_cache.set(self.incremental_bytes())
        # Each of these re-decodes prompt + all its tokens, so lengths in one batch differ a lot.
        lengths = [jobs[i].session.prompt_tokens.numel() + len(jobs[i].tokens) for i in full]
        for group in length_buckets(lengths, self.max_padding_ratio):
            for index, mel in zip(group, decode_chunk_batch(self.flow, [jobs[full[i]] for i in group])):
                results[full[index]] = mel
        return results
