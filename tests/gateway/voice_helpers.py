"""Shared by the voices tests: calls over real gRPC, audio files made in the test, stage
bookkeeping, and the in-process library's audio for a gateway request's plan."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import grpc
import numpy as np
import soundfile

from services.common.pb import speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.common.speaker_protos import prompt_from_proto
from services.flow.api import VoicePrompt
from services.llm.model.prompt import build_prompt
from services.pipeline.library import CosyVoicePipeline
from services.tinymodel.prompt_audio import PROMPT_TEXT_FILE, PROMPT_WAV
from tests.stack import Stack


def shorten_speech(stack: Stack, max_ratio: float) -> None:
    """Cap the LLM stage's speech length at max_ratio × text tokens (its engine's default
    sampling parameters). The random-weight LLM never samples EOS, so it always runs to the
    cap; 20 (the default) makes 12 s of audio for a short sentence, slow to vocode on 2 cores."""
    engine = stack.llm.servicer.engine.engine  # the LLMEngine behind the stage's AsyncLLMEngine
    engine.default_params = dataclasses.replace(engine.default_params, max_token_text_ratio=max_ratio)


async def speaker_features(address: str, name: str) -> "Features":
    speaker = await speakers_call(address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name=name, include_features=True))
    return Features(*prompt_from_proto(speaker.features.prompt, "features"))


def prompt_sample(model_dir: Path) -> tuple[bytes, str]:
    """The tiny model's sample recording (24 kHz WAV) and its transcript."""
    return (model_dir / PROMPT_WAV).read_bytes(), (model_dir / PROMPT_TEXT_FILE).read_text(encoding="utf-8").strip()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def tone(seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


async def synthesize(address: str, **fields: object) -> list[tts_pb2.SynthesizeResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        return [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(**fields))]


async def synthesize_error(address: str, **fields: object) -> grpc.aio.AioRpcError:
    try:
        await synthesize(address, **fields)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"Synthesize({fields!r}) succeeded; an error was expected")


async def speakers_call(address: str, method: str, request: object) -> object:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        return await getattr(speakers_pb2_grpc.SpeakersStub(channel), method)(request)


async def speakers_error(address: str, method: str, request: object) -> grpc.aio.AioRpcError:
    try:
        await speakers_call(address, method, request)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"Speakers.{method} succeeded; an error was expected")


async def speaker_names(address: str) -> list[tuple[str, bool]]:
    listed = await speakers_call(address, "ListSpeakers", speakers_pb2.ListSpeakersRequest())
    return [(s.name, s.preset) for s in listed.speakers]


def f32(responses: list[tts_pb2.SynthesizeResponse]) -> list[np.ndarray]:
    return [np.frombuffer(r.audio, "<f4") for r in responses]


def s16(responses: list[tts_pb2.SynthesizeResponse]) -> np.ndarray:
    return np.frombuffer(b"".join(r.audio for r in responses), "<i2")


def stage_streams(stack: Stack) -> tuple[int, int, int]:
    """Requests each model stage holds state for (as in test_gateway.py)."""
    return (
        stack.llm.servicer.engine.num_active_requests,
        stack.flow.servicer.runner.num_sessions,
        stack.vocoder.servicer.runner.num_streams,
    )


def stage_work(stack: Stack) -> dict[str, float]:
    """Counters that move only when a model stage really worked on a request, plus the
    frontend's prompt encodings (by outcome)."""

    def value(app, name: str, labels: dict | None = None) -> float:
        return app.host.registry.get_sample_value(name, labels or {}) or 0.0

    return {
        "llm_prompt_tokens": value(stack.llm, "cosyvoice_llm_prompt_tokens_total"),
        "llm_generated": value(stack.llm, "cosyvoice_llm_generation_tokens_total"),
        "flow_frames": value(stack.flow, "cosyvoice_flow_mel_frames_total"),
        "vocoder_seconds": value(stack.vocoder, "cosyvoice_vocoder_audio_seconds_total"),
        "frontend_prompts": sum(
            value(stack.frontend, "cosyvoice_frontend_prompts_total", {"outcome": o}) for o in ("ok", "invalid", "error")
        ),
    }


@dataclasses.dataclass(frozen=True)
class Features:
    """A voice's conditioning: speech tokens, prompt mel, x-vector."""

    tokens: np.ndarray
    mel: np.ndarray
    embedding: np.ndarray

    def same(self, other: "Features") -> bool:
        return all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in ((self.tokens, other.tokens), (self.mel, other.mel), (self.embedding, other.embedding))
        )

    @property
    def voice_prompt(self) -> VoicePrompt:
        return VoicePrompt(self.tokens, self.mel, self.embedding)


async def frontend_features(stack: Stack, audio: bytes, pcm16_sample_rate: int = 0) -> Features:
    """What the stack's frontend computes for a recording (the same runner the gateway calls)."""
    features, _ = await stack.frontend.servicer.runner.encode_prompt(audio, pcm16_sample_rate, "prompt.audio")
    return Features(features.speech_tokens, features.prompt_mel, features.embedding)


async def frontend_segments(stack: Stack, text: str) -> list[str]:
    return await stack.frontend.servicer.runner.split_text(text, True, False)


async def frontend_transcript(stack: Stack, text: str) -> str:
    return (await stack.frontend.servicer.runner.split_text(text, True, True))[0]


def library_audio(
    library: CosyVoicePipeline,
    mode: str,
    text: str,
    *,
    seed: int,
    stream: bool,
    features: Features | None = None,
    prompt_text: str = "",
    instruction: str = "",
    speed: float = 1.0,
) -> list[np.ndarray]:
    """The library's audio for one segment, built as the gateway plans it: the LLM prompt by
    mode (zero_shot: transcript ++ text and the prompt tokens; instruct2: instruction ++ text;
    sft and cross_lingual: the text), the flow prompt = the recording's features (sft: the
    default preset), LLM sampling and vocoder noise from the same seed, the same chunk schedule."""
    encode = library.tokenizer.encode
    kwargs: dict = {}
    if mode == "zero_shot":
        kwargs = {"prompt_text_ids": encode(prompt_text), "prompt_speech_tokens": tuple(int(t) for t in features.tokens)}
    elif mode == "instruct2":
        kwargs = {"instruct_text_ids": encode(instruction)}
    llm_prompt = build_prompt(mode, encode(text), **kwargs)
    tokens = library.engine.generate(llm_prompt, dataclasses.replace(library.engine.default_params, seed=seed))
    prompt = None if mode == "sft" else features.voice_prompt
    return list(library.tokens_to_audio(tokens, seed=seed, stream=stream, speed=speed, prompt=prompt))


async def register_sample(address: str, model_dir: Path, name: str) -> None:
    """Register the tiny model's sample recording under `name`."""
    audio, transcript = prompt_sample(model_dir)
    request = speakers_pb2.RegisterSpeakerRequest(name=name, prompt=tts_pb2.PromptAudio(audio=audio, text=transcript))
    await speakers_call(address, "RegisterSpeaker", request)
