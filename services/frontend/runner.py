"""The frontend's work, off the event loop: prompt encoding, text splitting, spk2info files.

Prompt encoding is CPU work of tens of milliseconds (resampling, three feature transforms,
two ONNX models). It runs on a small thread pool: ONNX Runtime, numpy's FFTs and torch release
the GIL, so several prompts are encoded at once while the event loop keeps relaying. The pool
is bounded, and so is the queue in front of it (`max_pending`), so a burst of registrations
gets RESOURCE_EXHAUSTED instead of unbounded memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from services.common.errors import InvalidRequest, Overloaded
from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.common.speakers import SpeakerRecord
from services.frontend.audio import DecodedAudio, decode_audio, pcm16_audio
from services.frontend.config import FrontendServiceConfig
from services.frontend.metrics import FrontendMetrics
from services.frontend.prompt import PromptEncoder, PromptFeatures
from services.frontend.spk2info import read_spk2info, write_spk2info
from services.frontend.text import TextFrontend

logger = logging.getLogger(__name__)
T = TypeVar("T")


class FrontendRunner:
    def __init__(
        self,
        encoder: PromptEncoder,
        text: TextFrontend,
        tokenizer: CosyVoiceTokenizer,
        presets: list[SpeakerRecord],
        metrics: FrontendMetrics,
        num_workers: int = 2,
        max_audio_bytes: int = 32 * 1024 * 1024,
        max_prompt_seconds: float = 30.0,
    ) -> None:
        self.encoder = encoder
        self.text = text
        self.tokenizer = tokenizer
        self.presets = presets
        self.metrics = metrics
        self.max_audio_bytes = max_audio_bytes
        self.max_prompt_seconds = max_prompt_seconds
        self.max_pending = num_workers * 8
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="frontend")

    @classmethod
    def from_config(cls, config: FrontendServiceConfig, metrics: FrontendMetrics) -> "FrontendRunner":
        config.apply_threads()
        model_dir = ModelDir.open(config.model_dir)
        tokenizer = CosyVoiceTokenizer.from_dir(model_dir.tokenizer_dir)
        encoder = PromptEncoder.from_model_dir(
            model_dir, providers=_providers(config), num_threads=config.onnx_threads,
            prompt_24k_source=config.prompt_24k_source,
        )
        text = TextFrontend(lambda piece: len(tokenizer.encode(piece)))
        presets: list[SpeakerRecord] = []
        if model_dir.spk2info_path is not None:
            presets = [
                dataclasses.replace(record, preset=True)
                for record in read_spk2info(model_dir.spk2info_path, _decode_keeping_specials(tokenizer))
            ]
        logger.info("frontend ready: %d preset speakers", len(presets))
        return cls(
            encoder, text, tokenizer, presets, metrics, config.num_workers, config.max_audio_bytes,
            config.max_prompt_seconds,
        )

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pending >= self.max_pending:
            raise Overloaded(f"{self._pending} frontend jobs already queued (num_workers × 8)")
        self._pending += 1
        self.metrics.queue_depth.inc()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1
            self.metrics.queue_depth.dec()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def encode_prompt(self, data: bytes, pcm16_sample_rate: int, field: str) -> tuple[PromptFeatures, float]:
        """(features, recording seconds); bad audio raises InvalidRequest naming `field`."""
        if not data:
            raise InvalidRequest(f"{field}: must not be empty")
        if len(data) > self.max_audio_bytes:
            raise InvalidRequest(f"{field}: {len(data)} bytes exceed the limit of {self.max_audio_bytes}")
        started = time.perf_counter()
        outcome = "error"
        try:
            features, seconds = await self._run(self._encode, data, pcm16_sample_rate, field)
            outcome = "ok"
            return features, seconds
        except InvalidRequest:
            outcome = "invalid"
            raise
        finally:
            self.metrics.prompts.labels(outcome).inc()
            self.metrics.prompt_duration.observe(time.perf_counter() - started)

    def _encode(self, data: bytes, pcm16_sample_rate: int, field: str) -> tuple[PromptFeatures, float]:
        audio: DecodedAudio = pcm16_audio(data, pcm16_sample_rate, field) if pcm16_sample_rate else decode_audio(
            data, field, self.max_prompt_seconds
        )
        return self.encoder.encode(audio, field, self.max_prompt_seconds), audio.duration

    async def split_text(self, text: str, normalize: bool, is_prompt: bool) -> list[str]:
        self.metrics.texts.inc()
        if is_prompt:
            return [await self._run(self.text.normalize_prompt, text, normalize)]
        segments = await self._run(self.text.segments, text, normalize)
        self.metrics.segments.inc(len(segments))
        return segments

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text on its own, as the LLM stage tokenizes `text` and `prompt_text`."""
        return await self._run(lambda: [len(self.tokenizer.encode(t)) if t else 0 for t in texts])

    async def read_table(self, data: bytes) -> list[SpeakerRecord]:
        try:
            return await self._run(read_spk2info, data, _decode_keeping_specials(self.tokenizer))
        except ValueError as exc:
            raise InvalidRequest(f"spk2info: {exc}") from None

    async def write_table(self, records: Sequence[SpeakerRecord], schema: str) -> bytes:
        return await self._run(write_spk2info, records, schema, self.tokenizer.encode)


def _decode_keeping_specials(tokenizer: CosyVoiceTokenizer) -> Callable[[list[int]], str]:
    # A stored transcript may hold special tokens (e.g. <|endofprompt|>): keep them.
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def _providers(config: FrontendServiceConfig) -> list:
    providers: list = []
    for name in config.onnx_providers:
        if name == "CUDAExecutionProvider":
            index = int(config.device.split(":", 1)[1]) if ":" in config.device else 0
            providers.append((name, {"device_id": index}))
        else:
            providers.append(name)
    return providers

