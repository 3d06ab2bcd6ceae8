"""SpeakerRecord ⇄ wire messages, shared by the frontend stage and the gateway (numpy only)."""

from __future__ import annotations

import numpy as np

from services.common.pb import common_pb2, frontend_pb2
from services.common.speakers import SpeakerRecord
from services.common.tensors import expect_shape, from_proto, to_proto

MEL_BINS = 80
EMBEDDING_DIM = 192


def prompt_to_proto(tokens: np.ndarray, mel: np.ndarray, embedding: np.ndarray) -> common_pb2.SpeakerPrompt:
    return common_pb2.SpeakerPrompt(
        prompt_tokens=to_proto(np.asarray(tokens, np.int32)),
        prompt_mel=to_proto(np.asarray(mel, np.float32)),
        speaker_embedding=to_proto(np.asarray(embedding, np.float32)),
    )


def prompt_from_proto(prompt: common_pb2.SpeakerPrompt, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens int32 [N], mel float32 [M, 80], embedding float32 [192]); malformed → InvalidRequest."""
    tokens = expect_shape(from_proto(prompt.prompt_tokens, f"{field}.prompt_tokens"), f"{field}.prompt_tokens", (None,))
    mel = expect_shape(from_proto(prompt.prompt_mel, f"{field}.prompt_mel"), f"{field}.prompt_mel", (None, MEL_BINS))
    embedding = expect_shape(
        from_proto(prompt.speaker_embedding, f"{field}.speaker_embedding"), f"{field}.speaker_embedding",
        (EMBEDDING_DIM,),
    )
    return tokens.astype(np.int32), mel.astype(np.float32), embedding.astype(np.float32)


def record_to_proto(record: SpeakerRecord) -> frontend_pb2.StoredSpeaker:
    return frontend_pb2.StoredSpeaker(
        name=record.name,
        prompt_text=record.prompt_text,
        prompt=prompt_to_proto(record.speech_tokens, record.prompt_mel, record.embedding),
    )


def record_from_proto(message: frontend_pb2.StoredSpeaker, field: str, preset: bool = False) -> SpeakerRecord:
    tokens, mel, embedding = prompt_from_proto(message.prompt, f"{field}.prompt")
    return SpeakerRecord(
        name=message.name, prompt_text=message.prompt_text, speech_tokens=tokens, prompt_mel=mel,
        embedding=embedding, preset=preset,
    )
