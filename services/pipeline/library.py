"""In-process CosyVoice 2: text → speech tokens → mel → waveform, offline or streaming.

The streaming form is upstream's token2wav schedule (`services.common.chunking`): the flow
re-runs over every token so far and its mel is sliced by token offset, 3 look-ahead tokens
are withheld, and the vocoder's caches carry over between chunks. All of it is per-request
state, so several pipelines' generators may interleave on one engine. This is the monolith
baseline the split services are compared against, and what their outputs must equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from services.common.chunking import Chunk, ChunkPolicy, TokenFeed
from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.flow.api import VoicePrompt
from services.flow.chunk_decoder import (
    MEL_BINS,
    ChunkJob,
    FlowSession,
    decode_chunk_batch,
    prompt_session,
    speaker_session,
)
from services.flow.model.loader import load_flow
from services.flow.speakers import SpeakerTable
from services.llm.engine.llm_engine import LLMEngine
from services.llm.model.prompt import build_prompt
from services.vocoder.model.loader import load_hift
from services.vocoder.model.streaming import VocoderStream


@dataclass
class _StreamState:
    session: FlowSession
    vocoder: VocoderStream


class CosyVoicePipeline:
    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: CosyVoiceTokenizer,
        flow: torch.nn.Module,
        hift: torch.nn.Module,
        speakers: SpeakerTable,
        policy: ChunkPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.flow = flow
        self.hift = hift
        self.speakers = speakers
        self.policy = policy or ChunkPolicy(lookahead=int(flow.pre_lookahead_len))
        self.sample_rate = int(hift.sample_rate)

    @classmethod
    def from_model_dir(
        cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "CosyVoicePipeline":
        model_dir = ModelDir.open(path)
        return cls(
            LLMEngine.from_model_dir(model_dir, device, dtype),
            CosyVoiceTokenizer.from_dir(model_dir.tokenizer_dir),
            load_flow(model_dir, device, dtype),
            load_hift(model_dir, device, dtype),
            SpeakerTable.load(model_dir.spk2info_path),
        )

    def speech_tokens(self, text: str, seed: int | None = None, **sampling: object) -> Iterator[int]:
        """Speech tokens as the LLM samples them (sft: no prompt)."""
        prompt = build_prompt("sft", self.tokenizer.encode(text))
        return self.engine.generate(prompt, dataclasses.replace(self.engine.default_params, seed=seed, **sampling))

    def synthesize(
        self, text: str, speaker_id: str | None = None, seed: int = 0, stream: bool = False, speed: float = 1.0
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks: one when offline, several when streaming."""
        tokens = self.speech_tokens(text, seed)
        return self.tokens_to_audio(tokens, speaker_id, seed, stream, speed)

    def tokens_to_audio(
        self,
        tokens: Iterable[int],
        speaker_id: str | None = None,
        seed: int = 0,
        stream: bool = False,
        speed: float = 1.0,
        *,
        prompt: VoicePrompt | None = None,
    ) -> Iterator[np.ndarray]:
        """Audio for given speech tokens: a preset speaker's voice, or `prompt`'s (flow prompt
        tokens + mel + x-vector; then `speaker_id` is ignored)."""
        generator = torch.Generator(device=self.hift.conv_pre.weight.device).manual_seed(seed)
        state = _StreamState(self._flow_session(speaker_id, prompt), VocoderStream(self.hift, generator))
        # The same cutting as the gateway's: the schedule when streaming, else one final chunk.
        feed = TokenFeed(self.policy, num_prompt_tokens=state.session.prompt_tokens.numel(), stream=stream)
        for token in tokens:
            for _, chunk in feed.push((token,), finished=False):
                yield self._emit(state, feed.tokens, chunk)
        for _, chunk in feed.push((), finished=True):
            yield self._emit(state, feed.tokens, chunk, speed if not stream else 1.0)

    def _flow_session(self, speaker_id: str | None, prompt: VoicePrompt | None) -> FlowSession:
        if prompt is None:
            return speaker_session(self.speakers.embedding(speaker_id))
        vocabulary = int(self.flow.input_embedding.num_embeddings)
        return prompt_session(prompt, int(self.flow.token_mel_ratio), vocabulary)

    def _emit(self, state: _StreamState, tokens: list[int], chunk: Chunk, speed: float = 1.0) -> np.ndarray:
        if chunk.num_new_tokens > 0:
            job = ChunkJob(state.session, tuple(tokens[: chunk.end]), chunk.offset, chunk.is_final)
            mel = decode_chunk_batch(self.flow, [job])[0]
        else:
            mel = np.zeros((MEL_BINS, 0), np.float32)
        state.session.token_offset = chunk.emit_end
        if mel.shape[1] == 0 and not state.vocoder.has_cache:
            return np.zeros(0, np.float32)  # nothing was ever generated
        audio = state.vocoder.push(torch.from_numpy(mel), final=chunk.is_final, speed=speed)
        return audio.float().cpu().numpy()
