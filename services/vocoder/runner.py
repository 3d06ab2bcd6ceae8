"""Vocoder runner: one `VocoderStream` (the CosyVoice 2 caches) per request, batched across requests.

Mel chunks of concurrent streams that wait at the same time go through HiFT together
(`vocode_batch` groups equal shapes); each stream keeps its own generator, so its audio does
not depend on what it was batched with.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch

from services.common.batching import Batcher
from services.common.errors import InvalidRequest, Overloaded, ServingError
from services.common.malloc_tuning import HeapTrimmer
from services.common.request_limits import check_range
from services.vocoder.api import SPEED_RANGE, AudioResult
from services.vocoder.metrics import VocoderMetrics
from services.vocoder.model.hift import HiFTGenerator
from services.vocoder.model.streaming import VocoderStream, VocoderStreamError, vocode_batch


@dataclass(frozen=True)
class _Job:
    stream: VocoderStream
    mel: torch.Tensor  # (80, frames)
    final: bool


class VocoderRunner:
    def __init__(
        self,
        hift: HiFTGenerator,
        metrics: VocoderMetrics,
        max_batch_size: int = 8,
        max_wait_seconds: float = 0.0,
        nice_increment: int = 0,
        max_chunk_frames: int = 15000,
        max_sessions: int = 128,
    ) -> None:
        self.hift = hift
        self.max_sessions = max_sessions
        self.max_chunk_frames = max_chunk_frames
        self.metrics = metrics
        self.sample_rate = int(hift.sample_rate)
        self.mel_bins = int(hift.config.in_channels)
        self.device = hift.conv_pre.weight.device
        self.num_streams = 0
        self._batcher: Batcher[_Job, np.ndarray] = Batcher(
            self._run_batch, max_batch_size, max_wait_seconds, name="vocoder", on_batch=self._observe_batch,
            nice_increment=nice_increment, trimmer=HeapTrimmer(),
        )

    def _observe_batch(self, size: int, seconds: float) -> None:
        # Through self.metrics, not bound at construction: the server swaps the warm-up's
        # scratch metrics for the served ones.
        self.metrics.observe_batch(size, seconds)

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    def open_stream(self, seed: int | None, speed: float = 1.0) -> VocoderStream:
        # Each stream holds its mel and source caches until it closes.
        if self.num_streams >= self.max_sessions:
            raise Overloaded(f"vocoder: {self.num_streams} sessions are open (max_sessions); retry later")
        check_range(speed, SPEED_RANGE, "start.speed")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        self.num_streams += 1
        self.metrics.streams.set(self.num_streams)
        return VocoderStream(self.hift, generator, speed=speed)

    def close_stream(self, stream: VocoderStream) -> None:
        self.num_streams -= 1
        self.metrics.streams.set(self.num_streams)

    async def vocode(self, stream: VocoderStream, mel: np.ndarray, finalize: bool) -> AudioResult:
        if mel.ndim != 2 or mel.shape[0] != self.mel_bins:
            raise InvalidRequest(f"chunk.mel: shape {list(mel.shape)}, expected [{self.mel_bins}, frames]")
        if mel.shape[1] > self.max_chunk_frames:
            raise InvalidRequest(f"chunk.mel: {mel.shape[1]} frames exceed the limit of {self.max_chunk_frames}")
        if not np.isfinite(mel).all():
            raise InvalidRequest("chunk.mel: values must be finite")
        started = time.perf_counter()
        first = stream.samples_emitted == 0 and not stream.has_cache
        if stream.speed != 1.0 and not (first and finalize):
            raise InvalidRequest("start.speed: only a stream of one final chunk (non-streaming) can change speed")
        if mel.shape[1] == 0 and (not finalize or first):
            samples = np.zeros(0, np.float32)  # nothing to vocode and nothing held back
        elif first and not finalize and mel.shape[1] < stream.mel_cache_frames:
            raise InvalidRequest(
                f"chunk.mel: a first non-final chunk needs at least {stream.mel_cache_frames} frames"
            )
        else:
            self.metrics.queue_depth.inc()
            try:
                samples = await self._batcher.submit(_Job(stream, torch.from_numpy(mel.astype(np.float32)), finalize))
            finally:
                self.metrics.queue_depth.dec()
        elapsed = time.perf_counter() - started
        self.metrics.chunk_duration.observe(elapsed)
        self.metrics.audio.inc(samples.size / self.sample_rate)
        return AudioResult(samples, elapsed)

    def _run_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        try:
            outputs = vocode_batch([j.stream for j in jobs], [j.mel for j in jobs], [j.final for j in jobs])
        except VocoderStreamError as exc:  # inputs were validated before: this is a bug of ours
            raise ServingError(f"vocoder stream state: {exc}") from exc
        return [out.float().cpu().numpy() for out in outputs]
