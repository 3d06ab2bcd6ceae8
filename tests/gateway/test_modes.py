"""gateway/modes.py: which inference mode a request runs in, every rejection with its exact
message, the instruct2 LLM prompt, and the speed rule. Pure functions, no stack."""

from __future__ import annotations

import math

import pytest

from gateway.modes import END_OF_PROMPT, MAX_INSTRUCT_CHARS, Mode, VoiceFacts, check_speed, choose_mode, instruction
from services.common.errors import InvalidRequest

# The voices a request can name, as the rules see them.
PRESET_SFT = VoiceFacts("speaker_id", has_recording=False, has_transcript=False)  # embedding-only preset
DEFAULT_PRESET = VoiceFacts("", has_recording=False, has_transcript=False)  # no voice: the first preset
REGISTERED = VoiceFacts("speaker_id", has_recording=True, has_transcript=True)  # registered speaker
INLINE_WITH_TEXT = VoiceFacts("prompt", has_recording=True, has_transcript=True)
INLINE_NO_TEXT = VoiceFacts("prompt", has_recording=True, has_transcript=False)

SFT_WITH_PROMPT = (
    "prompt: sft speaks with a preset or registered speaker's x-vector; with prompt audio use "
    "zero_shot, cross_lingual or instruct2"
)
ZERO_SHOT_NEEDS_TEXT = "prompt.text: zero_shot needs the transcript of prompt.audio"
ZERO_SHOT_NEEDS_RECORDING = (
    "speaker_id: zero_shot needs a voice with a prompt recording (a registered speaker or prompt "
    "audio); this preset has only an x-vector"
)
CROSS_LINGUAL_NO_TEXT = "prompt.text: cross_lingual does not use a transcript; leave it empty or use zero_shot"
CROSS_LINGUAL_NEEDS_RECORDING = (
    "speaker_id: cross_lingual needs a voice with a prompt recording (a registered speaker or prompt "
    "audio); this preset has only an x-vector"
)
INSTRUCT2_NEEDS_INSTRUCTION = "instruct_text: instruct2 needs an instruction, e.g. 'Speak slowly.'"
INSTRUCT2_NO_TEXT = "prompt.text: instruct2 does not use a transcript; leave it empty"


def rejection(requested, voice, instruct_text=""):
    with pytest.raises(InvalidRequest) as info:
        choose_mode(requested, voice, instruct_text)
    return str(info.value)


# ------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("voice", "instruct_text", "expected"),
    [
        (REGISTERED, "Speak slowly.", Mode.INSTRUCT2),  # instruct_text wins over the recording
        (PRESET_SFT, "Speak slowly.", Mode.INSTRUCT2),
        (INLINE_NO_TEXT, "Speak slowly.", Mode.INSTRUCT2),
        (REGISTERED, "", Mode.ZERO_SHOT),  # recording + transcript
        (INLINE_WITH_TEXT, "", Mode.ZERO_SHOT),
        (INLINE_NO_TEXT, "", Mode.CROSS_LINGUAL),  # inline prompt without its text
        (PRESET_SFT, "", Mode.SFT),
        (DEFAULT_PRESET, "", Mode.SFT),
        # A stored voice with a recording but no transcript (e.g. an imported file) uses its
        # recording without the transcript: cross_lingual, as an inline prompt without text.
        (VoiceFacts("speaker_id", has_recording=True, has_transcript=False), "", Mode.CROSS_LINGUAL),
    ],
)
def test_default_mode(voice, instruct_text, expected):
    assert choose_mode(None, voice, instruct_text) is expected


@pytest.mark.parametrize(
    ("requested", "voice", "instruct_text"),
    [
        (Mode.SFT, PRESET_SFT, ""),
        (Mode.SFT, REGISTERED, ""),  # a registered speaker's x-vector only
        (Mode.SFT, DEFAULT_PRESET, ""),
        (Mode.ZERO_SHOT, REGISTERED, ""),
        (Mode.ZERO_SHOT, INLINE_WITH_TEXT, ""),
        (Mode.CROSS_LINGUAL, REGISTERED, ""),  # a stored transcript is simply not used
        (Mode.CROSS_LINGUAL, INLINE_NO_TEXT, ""),
        (Mode.INSTRUCT2, REGISTERED, "Speak slowly."),
        (Mode.INSTRUCT2, INLINE_NO_TEXT, "Speak slowly."),
        (Mode.INSTRUCT2, PRESET_SFT, "Speak slowly."),  # instruct2 with an x-vector-only preset
    ],
)
def test_explicit_mode_is_kept_when_consistent(requested, voice, instruct_text):
    assert choose_mode(requested, voice, instruct_text) is requested


# ------------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("requested", [Mode.SFT, Mode.ZERO_SHOT, Mode.CROSS_LINGUAL])
def test_instruct_text_outside_instruct2(requested):
    assert rejection(requested, REGISTERED, "Speak slowly.") == (
        f"instruct_text: only instruct2 uses an instruction (mode is {requested.value})"
    )


def test_instruct_text_too_long():
    assert choose_mode(None, REGISTERED, "x" * MAX_INSTRUCT_CHARS) is Mode.INSTRUCT2
    assert rejection(None, REGISTERED, "x" * (MAX_INSTRUCT_CHARS + 1)) == (
        f"instruct_text: longer than {MAX_INSTRUCT_CHARS} characters"
    )


@pytest.mark.parametrize("voice", [INLINE_WITH_TEXT, INLINE_NO_TEXT])
def test_sft_with_an_inline_prompt(voice):
    assert rejection(Mode.SFT, voice) == SFT_WITH_PROMPT


def test_zero_shot_inline_prompt_without_transcript():
    assert rejection(Mode.ZERO_SHOT, INLINE_NO_TEXT) == ZERO_SHOT_NEEDS_TEXT


@pytest.mark.parametrize("voice", [PRESET_SFT, DEFAULT_PRESET])
def test_zero_shot_with_an_embedding_only_preset(voice):
    assert rejection(Mode.ZERO_SHOT, voice) == ZERO_SHOT_NEEDS_RECORDING


def test_cross_lingual_inline_prompt_with_transcript():
    assert rejection(Mode.CROSS_LINGUAL, INLINE_WITH_TEXT) == CROSS_LINGUAL_NO_TEXT


@pytest.mark.parametrize("voice", [PRESET_SFT, DEFAULT_PRESET])
def test_cross_lingual_with_an_embedding_only_preset(voice):
    assert rejection(Mode.CROSS_LINGUAL, voice) == CROSS_LINGUAL_NEEDS_RECORDING


@pytest.mark.parametrize("instruct_text", ["", "   ", "\n\t"])
def test_instruct2_without_an_instruction(instruct_text):
    assert rejection(Mode.INSTRUCT2, REGISTERED, instruct_text) == INSTRUCT2_NEEDS_INSTRUCTION


def test_instruct2_inline_prompt_with_transcript():
    assert rejection(Mode.INSTRUCT2, INLINE_WITH_TEXT, "Speak slowly.") == INSTRUCT2_NO_TEXT
    # ...also when instruct2 is the default chosen from instruct_text
    assert rejection(None, INLINE_WITH_TEXT, "Speak slowly.") == INSTRUCT2_NO_TEXT


# ------------------------------------------------------------------------------- instruction


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Speak slowly.", "Speak slowly.<|endofprompt|>"),
        ("  Speak slowly.  \n", "Speak slowly.<|endofprompt|>"),  # stripped
        ("Speak slowly.<|endofprompt|>", "Speak slowly.<|endofprompt|>"),  # not doubled
        ("Speak slowly.<|endofprompt|>  ", "Speak slowly.<|endofprompt|>"),
        ("用四川话说。", "用四川话说。<|endofprompt|>"),  # raw: not normalised
        ("Say 3 words", "Say 3 words<|endofprompt|>"),
    ],
)
def test_instruction_ends_in_one_end_of_prompt(given, expected):
    result = instruction(given)
    assert result == expected
    assert result.count(END_OF_PROMPT) == 1
    assert instruction(result) == result  # idempotent


# ------------------------------------------------------------------------------- speed


@pytest.mark.parametrize("stream", [False, True])
def test_unset_speed_is_one(stream):
    assert check_speed(None, stream) == 1.0


@pytest.mark.parametrize("speed", [0.5, 0.75, 1.0, 1.5, 2.0])
def test_speed_in_range_non_streaming(speed):
    result = check_speed(speed, False)
    assert result == speed and isinstance(result, float)


def test_speed_one_is_allowed_when_streaming():
    assert check_speed(1.0, True) == 1.0


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_speed_other_than_one_is_refused_when_streaming(speed):
    with pytest.raises(InvalidRequest) as info:
        check_speed(speed, True)
    assert str(info.value) == (
        "speed: only non-streaming requests (stream=false) can change the speed, as in the reference"
    )


@pytest.mark.parametrize(
    ("speed", "shown"),
    [(0.49, "0.49"), (2.01, "2.01"), (0.0, "0"), (-1.0, "-1"), (math.inf, "inf"), (math.nan, "nan")],
)
@pytest.mark.parametrize("stream", [False, True])
def test_speed_out_of_range(speed, shown, stream):
    with pytest.raises(InvalidRequest) as info:
        check_speed(speed, stream)
    assert str(info.value) == f"speed: {shown} is outside [0.5, 2.0]"
