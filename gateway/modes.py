"""Which inference mode a request runs in, and what each mode feeds the LLM and the flow.

Pure functions over plain values (no I/O), so every rule and every rejection is unit-tested.
CosyVoice 2's modes (the reference's frontend_* functions):

| mode          | LLM prompt text        | LLM prompt speech | flow conditioning             |
|---------------|------------------------|-------------------|-------------------------------|
| sft           | —                      | —                 | x-vector only                 |
| zero_shot     | the prompt transcript  | the prompt tokens | prompt tokens, mel, x-vector  |
| cross_lingual | —                      | —                 | prompt tokens, mel, x-vector  |
| instruct2     | instruction + <|endofprompt|> | —          | prompt tokens, mel, x-vector  |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from services.common.errors import InvalidRequest

END_OF_PROMPT = "<|endofprompt|>"
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MAX_INSTRUCT_CHARS = 500


class Mode(str, Enum):
    SFT = "sft"
    ZERO_SHOT = "zero_shot"
    CROSS_LINGUAL = "cross_lingual"
    INSTRUCT2 = "instruct2"


@dataclass(frozen=True)
class VoiceFacts:
    """What the mode rules need to know about the voice a request names."""

    given: str  # "speaker_id", "prompt" or "" (the model's default preset)
    has_recording: bool  # prompt speech tokens and mel exist (not an embedding-only preset)
    has_transcript: bool  # a prompt transcript exists (inline prompt.text, or stored)


def choose_mode(requested: Mode | None, voice: VoiceFacts, instruct_text: str) -> Mode:
    """The mode to run, or InvalidRequest naming the missing or contradicting field."""
    if requested is None:
        if instruct_text:
            requested = Mode.INSTRUCT2
        elif voice.has_recording and voice.has_transcript:
            requested = Mode.ZERO_SHOT
        elif voice.has_recording:  # a recording without its transcript (inline, or imported so)
            requested = Mode.CROSS_LINGUAL
        else:
            requested = Mode.SFT
    mode = requested
    if instruct_text and mode is not Mode.INSTRUCT2:
        raise InvalidRequest(f"instruct_text: only instruct2 uses an instruction (mode is {mode.value})")
    if len(instruct_text) > MAX_INSTRUCT_CHARS:
        raise InvalidRequest(f"instruct_text: longer than {MAX_INSTRUCT_CHARS} characters")
    if mode is Mode.SFT and voice.given == "prompt":
        raise InvalidRequest(
            "prompt: sft speaks with a preset or registered speaker's x-vector; with prompt audio use "
            "zero_shot, cross_lingual or instruct2"
        )
    if mode is Mode.ZERO_SHOT:
        if voice.given == "prompt" and not voice.has_transcript:
            raise InvalidRequest("prompt.text: zero_shot needs the transcript of prompt.audio")
        _need_recording(mode, voice)
    if mode is Mode.CROSS_LINGUAL:
        if voice.given == "prompt" and voice.has_transcript:
            raise InvalidRequest("prompt.text: cross_lingual does not use a transcript; leave it empty or use zero_shot")
        _need_recording(mode, voice)
    if mode is Mode.INSTRUCT2:
        if not instruct_text.strip():
            raise InvalidRequest("instruct_text: instruct2 needs an instruction, e.g. 'Speak slowly.'")
        if voice.given == "prompt" and voice.has_transcript:
            raise InvalidRequest("prompt.text: instruct2 does not use a transcript; leave it empty")
    return mode


def _need_recording(mode: Mode, voice: VoiceFacts) -> None:
    if not voice.has_recording:
        raise InvalidRequest(
            f"speaker_id: {mode.value} needs a voice with a prompt recording (a registered speaker or prompt "
            "audio); this preset has only an x-vector"
        )


def instruction(instruct_text: str) -> str:
    """The instruct2 LLM prompt: the instruction, raw (the reference does not normalise it),
    ending in <|endofprompt|>."""
    text = instruct_text.strip()
    return text if text.endswith(END_OF_PROMPT) else text + END_OF_PROMPT


def check_speed(speed: float | None, stream: bool) -> float:
    if speed is None:
        return 1.0
    if not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequest(f"speed: {speed:g} is outside [{MIN_SPEED}, {MAX_SPEED}]")
    if speed != 1.0 and stream:
        raise InvalidRequest("speed: only non-streaming requests (stream=false) can change the speed, as in the reference")
    return float(speed)
