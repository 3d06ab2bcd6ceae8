"""The voices a request may name: the model's presets, registered speakers, inline prompts.

Presets come from the frontend stage once at start (it reads the model's spk2info.pt); they
are read-only and live in memory. Registered speakers live in the SpeakerStore, whose calls
block (SQLite), so they run on a small thread pool and never on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from gateway.frontend_calls import FrontendClient
from gateway.registry.store import SpeakerStore
from services.common.errors import InvalidRequest, NotFound
from services.common.pb import common_pb2
from services.common.speaker_protos import prompt_from_proto, prompt_to_proto
from services.common.speakers import MAX_NAME_CHARS, SpeakerRecord
from services.common.tensors import to_proto

T = TypeVar("T")


@dataclass(frozen=True)
class Voice:
    """A resolved voice: what the LLM and the flow need, in wire form."""

    name: str  # speaker id; "" for an inline prompt
    prompt_text: str  # the (normalised) transcript; "" when there is none
    speech_tokens: tuple[int, ...]  # prompt speech tokens (zero-shot LLM prompt)
    prompt: common_pb2.SpeakerPrompt  # tokens, mel and x-vector for the flow

    @property
    def has_recording(self) -> bool:
        return len(self.speech_tokens) > 0

    def embedding_only(self) -> common_pb2.SpeakerPrompt:
        """sft: the x-vector without the prompt tokens and mel."""
        return common_pb2.SpeakerPrompt(
            prompt_tokens=to_proto(np.zeros(0, np.int32)),
            prompt_mel=to_proto(np.zeros((0, 80), np.float32)),
            speaker_embedding=self.prompt.speaker_embedding,
        )


def voice_of(record: SpeakerRecord) -> Voice:
    return Voice(
        name=record.name,
        prompt_text=record.prompt_text,
        speech_tokens=tuple(int(t) for t in record.speech_tokens),
        prompt=prompt_to_proto(record.speech_tokens, record.prompt_mel, record.embedding),
    )


def inline_voice(prompt: common_pb2.SpeakerPrompt, transcript: str, field: str) -> Voice:
    tokens, _, _ = prompt_from_proto(prompt, field)
    return Voice(name="", prompt_text=transcript, speech_tokens=tuple(int(t) for t in tokens), prompt=prompt)


class VoiceBook:
    def __init__(self, store: SpeakerStore, frontend: FrontendClient, num_threads: int = 4) -> None:
        self.store = store
        self.frontend = frontend
        self.presets: dict[str, SpeakerRecord] = {}
        self._preset_voices: dict[str, Voice] = {}  # wire form made once: presets never change
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="speaker-store")

    async def load_presets(self) -> None:
        self.presets = {record.name: record for record in await self.frontend.presets()}
        self._preset_voices = {name: voice_of(record) for name, record in self.presets.items()}

    @property
    def default_preset(self) -> str | None:
        return next(iter(sorted(self.presets)), None)

    async def in_store(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def record(self, name: str, field: str = "speaker_id") -> SpeakerRecord:
        """A preset or registered speaker; NOT_FOUND otherwise."""
        if len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(f"{field}: longer than {MAX_NAME_CHARS} characters")
        preset = self.presets.get(name)
        if preset is not None:
            return preset
        record = await self.in_store(self.store.get, name)
        if record is None:
            raise NotFound(f"{field}: {name!r} is not a registered or preset speaker")
        return record

    async def named(self, name: str, field: str = "speaker_id") -> Voice:
        if not name:
            default = self.default_preset
            if default is None:
                raise InvalidRequest(
                    f"{field}: this model has no preset speakers (no spk2info.pt): name a registered speaker "
                    "or send prompt audio"
                )
            name = default
        preset = self._preset_voices.get(name)
        return preset if preset is not None else voice_of(await self.record(name, field))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
