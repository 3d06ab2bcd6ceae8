"""LLM input assembly per mode, and the length rules."""

from __future__ import annotations

import pytest
import torch

from services.llm.model.prompt import PromptError, SynthesisMode, build_prompt, length_limits

TEXT = [40, 41, 42]
PROMPT_TEXT = [7, 8]
PROMPT_SPEECH = [11, 12, 13, 14]
INSTRUCT = [1, 2, 3]


@pytest.mark.parametrize(
    "mode, text_ids, speech",
    [
        ("sft", TEXT, []),
        ("zero_shot", PROMPT_TEXT + TEXT, PROMPT_SPEECH),
        ("cross_lingual", TEXT, []),  # the prompt transcript and tokens go to the flow only
        ("instruct2", INSTRUCT + TEXT, []),  # instruct text replaces the prompt transcript
    ],
)
def test_each_mode_picks_its_prompt_parts(mode: str, text_ids: list[int], speech: list[int]) -> None:
    prompt = build_prompt(
        mode,
        TEXT,
        prompt_text_ids=PROMPT_TEXT,
        prompt_speech_tokens=PROMPT_SPEECH,
        instruct_text_ids=INSTRUCT,
    )
    assert list(prompt.text_ids) == text_ids
    assert list(prompt.speech_tokens) == speech
    assert prompt.num_target_text_tokens == len(TEXT)  # prompt text never counts
    assert prompt.num_positions == 1 + len(text_ids) + 1 + len(speech)


def test_embedding_layout_is_sos_text_task_speech(tiny_lm) -> None:
    prompt = build_prompt(SynthesisMode.ZERO_SHOT, TEXT, prompt_text_ids=PROMPT_TEXT,
                          prompt_speech_tokens=PROMPT_SPEECH)
    with torch.inference_mode():
        embeds = tiny_lm.embed_prompt(prompt)
        text = tiny_lm.backbone.model.embed_tokens(torch.tensor(PROMPT_TEXT + TEXT))
        speech = tiny_lm.speech_embedding(torch.tensor(PROMPT_SPEECH))
    rows = tiny_lm.llm_embedding.weight
    assert embeds.shape == (prompt.num_positions, rows.shape[1])
    assert torch.equal(embeds[0], rows[0])  # SOS
    assert torch.equal(embeds[1:6], text)
    assert torch.equal(embeds[6], rows[1])  # TASK_ID
    assert torch.equal(embeds[7:], speech)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mode": "sft", "text_ids": []}, "text_ids"),
        ({"mode": "vc", "text_ids": TEXT}, "mode"),
        ({"mode": "zero_shot", "text_ids": TEXT, "prompt_text_ids": PROMPT_TEXT}, "prompt_speech_tokens"),
        ({"mode": "instruct2", "text_ids": TEXT}, "instruct_text_ids"),
        ({"mode": "sft", "text_ids": [1, 2.0]}, "text_ids"),
    ],
)
def test_bad_requests_raise_prompt_error_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(PromptError, match=field):
        build_prompt(**kwargs)


def test_ids_outside_their_tables_are_rejected(tiny_lm) -> None:
    with pytest.raises(PromptError, match="text_ids"):
        tiny_lm.check_prompt(build_prompt("sft", [tiny_lm.text_vocab_size]))
    with pytest.raises(PromptError, match="prompt_speech_tokens"):  # specials are not prompt tokens
        tiny_lm.check_prompt(build_prompt("zero_shot", TEXT, prompt_text_ids=[1],
                                          prompt_speech_tokens=[tiny_lm.eos_token]))


@pytest.mark.parametrize(
    "n, ratios, expected",
    [(12, (2, 20), (24, 240)), (1, (2, 20), (2, 20)), (7, (1.5, 2.5), (10, 17)), (3, (0, 0.5), (0, 1))],
)
def test_length_limits_truncate_n_times_ratio(n: int, ratios: tuple, expected: tuple) -> None:
    assert length_limits(n, *ratios) == expected
