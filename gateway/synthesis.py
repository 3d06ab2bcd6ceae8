"""From a request's fields to audio: resolve the voice, choose the mode, prepare the text, and
run the stage pipeline once per text segment, streaming across segments.

Shared by the public Synthesize and SynthesizeTextStream RPCs and the official
cosyvoice.CosyVoice service, so every API gets the same rules and the same messages.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from typing import AsyncGenerator, AsyncIterator, Awaitable, TypeVar

from gateway.frontend_calls import FrontendClient
from gateway.metrics import GatewayMetrics
from gateway.modes import Mode, VoiceFacts, check_speed, choose_mode, instruction
from gateway.pipeline import AudioPiece, StagePipeline, SynthesisJob
from gateway.segments import back_to_back
from gateway.token_budget import PieceCheck, TokenBudget
from gateway.voices import Voice, VoiceBook, inline_voice
from services.common.errors import InvalidRequest

SEED_MODULUS = 1 << 63
A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results; the first failure is raised and the other call cancelled (asyncio.gather
    would leave it running, e.g. encoding a prompt for a request already rejected)."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class VoiceSpec:
    """How a request names its voice: exactly one of these, or none (the default preset)."""

    speaker_id: str = ""
    prompt_audio: bytes | None = None  # an audio file, or raw PCM when pcm16_sample_rate is set
    prompt_text: str = ""
    pcm16_sample_rate: int = 0
    field: str = "prompt"  # the request's name of the inline prompt, for messages
    speaker_field: str = "speaker_id"  # the request's name of the speaker id, for messages
    audio_field: str = ""  # the request's name of the recording; default "<field>.audio"

    @property
    def audio_name(self) -> str:
        return self.audio_field or f"{self.field}.audio"

    @property
    def given(self) -> str:
        if self.prompt_audio is not None:
            return "prompt"
        return "speaker_id" if self.speaker_id else ""


@dataclass(frozen=True)
class SynthesisOptions:
    text: str
    voice: VoiceSpec
    mode: Mode | None = None
    instruct_text: str = ""
    seed: int = 0
    stream: bool = True
    speed: float | None = None
    text_frontend: bool = True
    text_field: str = "text"  # the request's name of the text, for messages


@dataclass(frozen=True)
class SynthesisPlan:
    request_id: str
    mode: Mode
    segments: tuple[str, ...]
    job: SynthesisJob  # the first segment's job; later segments replace text and seed


class Synthesizer:
    def __init__(
        self,
        pipeline: StagePipeline,
        voices: VoiceBook,
        frontend: FrontendClient,
        max_text_chars: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.voices = voices
        self.frontend = frontend
        self.max_text_chars = max_text_chars
        self.metrics = metrics
        self.budget = TokenBudget(pipeline.clients.llm, frontend, pipeline.timeout)

    def check_text(self, text: str, field: str = "text") -> None:
        if not text.strip():
            raise InvalidRequest(f"{field}: must not be empty")
        if len(text) > self.max_text_chars:
            raise InvalidRequest(f"{field}: {len(text)} characters exceed the limit of {self.max_text_chars}")

    async def _voice(self, spec: VoiceSpec, normalize: bool, timeout: float | None) -> Voice:
        started = time.perf_counter()
        voice = await self._resolve(spec, normalize, timeout)
        if self.metrics is not None:  # what a registered speaker saves over an inline prompt
            kind = "inline" if spec.prompt_audio is not None else (
                "preset" if voice.name in self.voices.presets else "registered"
            )
            self.metrics.voice_duration.labels(kind).observe(time.perf_counter() - started)
        return voice

    async def _resolve(self, spec: VoiceSpec, normalize: bool, timeout: float | None) -> Voice:
        if spec.prompt_audio is None:
            return await self.voices.named(spec.speaker_id, spec.speaker_field)
        if not spec.prompt_audio:
            raise InvalidRequest(f"{spec.audio_name}: must not be empty")
        encode = self.frontend.encode_prompt(
            spec.prompt_audio, spec.audio_name, spec.pcm16_sample_rate, timeout=timeout
        )
        if spec.prompt_text.strip():  # normalised while the recording is encoded
            transcript = self.frontend.normalize_prompt_text(spec.prompt_text, normalize, timeout)
            prompt, text = await both(encode, transcript)
        else:
            prompt, text = await encode, ""
        return inline_voice(prompt, text, spec.field)

    async def _segments(self, options: SynthesisOptions, timeout: float | None, text_stream: bool) -> list[str]:
        """The text segments to synthesise in turn (a text stream has one, its text comes later)."""
        if text_stream:
            return [""]
        if not options.text_frontend:
            return [options.text]
        segments = await self.frontend.segments(options.text, True, timeout)
        if not segments:
            advice = " (send it with text_frontend=false)" if options.text_field == "text" else ""
            raise InvalidRequest(f"{options.text_field}: nothing to speak after normalisation{advice}")
        return segments

    async def plan(
        self, options: SynthesisOptions, timeout: float | None = None, *, text_stream: bool = False
    ) -> SynthesisPlan:
        """Validate everything a stage would reject, before any stage starts work."""
        if not text_stream:
            self.check_text(options.text, options.text_field)
        speed = check_speed(options.speed, options.stream)
        if options.voice.prompt_audio is not None:  # contradictions first: encoding costs tens of ms
            choose_mode(options.mode, VoiceFacts("prompt", True, bool(options.voice.prompt_text.strip())),
                        options.instruct_text)
        if options.voice.prompt_audio is None:
            # A name is looked up first (microseconds): an unknown speaker costs the frontend nothing.
            voice = await self._voice(options.voice, options.text_frontend, timeout)
            segments = await self._segments(options, timeout, text_stream)
        else:  # an inline recording is encoded while the text is normalised
            voice, segments = await both(
                self._voice(options.voice, options.text_frontend, timeout), self._segments(options, timeout, text_stream)
            )
        facts = VoiceFacts(options.voice.given, voice.has_recording, bool(voice.prompt_text))
        mode = choose_mode(options.mode, facts, options.instruct_text)
        llm_text, llm_tokens = "", ()
        if mode is Mode.ZERO_SHOT:
            llm_text, llm_tokens = voice.prompt_text, voice.speech_tokens
        elif mode is Mode.INSTRUCT2:
            llm_text = instruction(options.instruct_text)
        if not text_stream:  # a text stream's pieces are counted as they come (piece_check)
            prompt_field = "instruct_text" if mode is Mode.INSTRUCT2 else f"{options.voice.field}.text"
            await self.budget.check_segments(
                segments, llm_text, len(llm_tokens), options.text_field, timeout, prompt_field
            )
        flow_prompt = voice.embedding_only() if mode is Mode.SFT else voice.prompt
        request_id = uuid.uuid4().hex[:16]
        job = SynthesisJob(
            request_id=request_id,
            text=segments[0],
            speaker_id=voice.name,
            seed=options.seed % SEED_MODULUS,
            stream=options.stream,
            prompt_text=llm_text,
            prompt_speech_tokens=llm_tokens,
            flow_prompt=flow_prompt,
            num_flow_prompt_tokens=0 if mode is Mode.SFT else len(voice.speech_tokens),
            speed=speed,
        )
        return SynthesisPlan(request_id, mode, tuple(segments), job)

    async def piece_check(self, plan: SynthesisPlan, timeout: float | None = None) -> PieceCheck:
        """The token check of a text stream's pieces: each and all together within what fits
        in the LLM with the plan's voice (gateway/token_budget.py)."""
        job = plan.job
        return await self.budget.piece_check(job.prompt_text, len(job.prompt_speech_tokens), "text", timeout)

    async def run(
        self, plan: SynthesisPlan, timeout: float | None = None, text_pieces: AsyncIterator[str] | None = None
    ) -> AsyncIterator[AudioPiece]:
        """Audio of every segment in order; only the last segment's last piece is final. Each
        segment is its own pass through the stages (as in the reference), seeded seed + index,
        and starts once the previous segment's LLM is done (gateway/segments.py)."""
        last = len(plan.segments) - 1
        if last == 0:  # one segment (most requests, and every text stream): no tasks needed
            async for piece in self.pipeline.run(plan.job, timeout, text_pieces):
                yield piece
            return

        def run_segment(index: int, llm_done: asyncio.Event) -> AsyncGenerator[AudioPiece, None]:
            job = plan.job if index == 0 else replace(
                plan.job, text=plan.segments[index], seed=(plan.job.seed + index) % SEED_MODULUS,
                request_id=f"{plan.request_id}-{index}",
            )
            return self.pipeline.run(job, timeout, None, llm_done)

        finals = 0
        queues = self.metrics.queues if self.metrics is not None else None
        async for piece in back_to_back(len(plan.segments), run_segment, self.pipeline.queue_chunks, queues):
            if piece.is_final:  # every segment ends with a final piece; only the last one ends the response
                finals += 1
                if finals <= last:
                    piece = replace(piece, is_final=False)
            yield piece
