"""The in-process library pipeline (`CosyVoicePipeline`) on the tiny model: lengths, chunk
sizes, seeding, per-request state under interleaving, speed, and errors."""

from __future__ import annotations

import math
from itertools import zip_longest

import numpy as np
import pytest
import torch

from services.common.errors import InvalidRequest, NotFound
from services.flow.api import VoicePrompt
from services.pipeline.library import CosyVoicePipeline

FRAME = 480  # samples per mel frame; 2 frames per token
OVERLAP = 8 * FRAME  # the vocoder's held-back crossfade tail


def random_tokens(count: int, seed: int) -> list[int]:
    return torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def voice_prompt(num_tokens: int, seed: int = 3) -> VoicePrompt:
    rng = np.random.default_rng(seed)
    return VoicePrompt(
        rng.integers(0, 6561, num_tokens).astype(np.int32),
        (rng.standard_normal((2 * num_tokens, 80)) * 2 - 5).astype(np.float32),
        rng.standard_normal(192).astype(np.float32),
    )


def expected_chunk_sizes(num_tokens: int, num_prompt: int) -> list[int]:
    """Samples per emitted chunk (cosyvoice-facts §6.2): the first chunk 2·hop·480 − 3840 (the
    crossfade tail is held back), later ones 2·hop·480, the final one the rest plus the tail."""
    hop, lookahead = 25, 3
    pad = math.ceil(num_prompt / hop) * hop - num_prompt
    hops, offset = [], 0
    while num_tokens - offset >= (this_hop := hop + pad if offset == 0 else hop) + lookahead:
        hops.append(this_hop)
        offset += this_hop
        hop = min(100, hop * 2)
    sizes = [2 * h * FRAME for h in hops] + [2 * (num_tokens - offset) * FRAME]
    if len(sizes) > 1:
        sizes[0] -= OVERLAP
        sizes[-1] += OVERLAP
    return sizes


def audio(pipeline: CosyVoicePipeline, tokens: list[int], **kwargs: object) -> list[np.ndarray]:
    return list(pipeline.tokens_to_audio(iter(tokens), **kwargs))


@pytest.mark.parametrize(
    ("num_tokens", "num_prompt"), [(1, 0), (27, 0), (28, 0), (31, 0), (150, 0), (60, 25), (90, 37)]
)
def test_offline_and_streaming_have_the_same_total_length(pipeline, num_tokens, num_prompt):
    tokens = random_tokens(num_tokens, seed=num_tokens)
    prompt = voice_prompt(num_prompt) if num_prompt else None
    offline = audio(pipeline, tokens, stream=False, prompt=prompt)
    streamed = audio(pipeline, tokens, stream=True, prompt=prompt)
    assert len(offline) == 1
    assert sum(len(chunk) for chunk in streamed) == len(offline[0]) == 2 * num_tokens * FRAME
    assert all(chunk.dtype == np.float32 for chunk in offline + streamed)


@pytest.mark.parametrize(
    ("num_tokens", "num_prompt", "sizes"),
    [
        (290, 0, [50 * FRAME - OVERLAP, 100 * FRAME, 200 * FRAME, 200 * FRAME, 30 * FRAME + OVERLAP]),
        (230, 37, [76 * FRAME - OVERLAP, 100 * FRAME, 200 * FRAME, 84 * FRAME + OVERLAP]),  # first hop 25 + 13
        (130, 25, [50 * FRAME - OVERLAP, 100 * FRAME, 110 * FRAME + OVERLAP]),  # no pad
        (20, 0, [40 * FRAME]),
    ],
)
def test_chunk_sizes_follow_the_schedule(pipeline, num_tokens, num_prompt, sizes):
    assert expected_chunk_sizes(num_tokens, num_prompt) == sizes
    prompt = voice_prompt(num_prompt) if num_prompt else None
    chunks = audio(pipeline, random_tokens(num_tokens, seed=1), stream=True, prompt=prompt)
    assert [len(chunk) for chunk in chunks] == sizes


@pytest.mark.parametrize("stream", [False, True])
def test_same_seed_same_audio_and_another_seed_other_audio(pipeline, stream):
    tokens = random_tokens(80, seed=5)
    first = np.concatenate(audio(pipeline, tokens, seed=3, stream=stream))
    again = np.concatenate(audio(pipeline, tokens, seed=3, stream=stream))
    other = np.concatenate(audio(pipeline, tokens, seed=4, stream=stream))
    assert np.array_equal(first, again)
    assert first.shape == other.shape and not np.array_equal(first, other)


def test_synthesize_is_reproducible_per_seed(pipeline):
    first = np.concatenate(list(pipeline.synthesize("Seeded speech.", seed=9, stream=True)))
    again = np.concatenate(list(pipeline.synthesize("Seeded speech.", seed=9, stream=True)))
    assert first.size > 0 and np.array_equal(first, again)


def test_interleaved_requests_equal_requests_alone(pipeline):
    """Two streaming requests' generators advanced in turn on one pipeline (LLM decode steps
    shared, flow and vocoder state per request) give each the audio it gets alone."""
    requests = [("The first of two requests.", 1), ("A second request, with another seed.", 2)]
    alone = [list(pipeline.synthesize(text, seed=seed, stream=True)) for text, seed in requests]
    generators = [pipeline.synthesize(text, seed=seed, stream=True) for text, seed in requests]
    interleaved: list[list[np.ndarray]] = [[], []]
    for pair in zip_longest(*generators):
        for index, chunk in enumerate(pair):
            if chunk is not None:
                interleaved[index].append(chunk)
    for expected, actual in zip(alone, interleaved):
        assert len(expected) > 1  # really streamed
        assert [len(c) for c in expected] == [len(c) for c in actual]
        assert all(np.array_equal(e, a) for e, a in zip(expected, actual))


def test_interleaved_token_streams_equal_streams_alone(pipeline):
    token_lists = [random_tokens(150, seed=21), random_tokens(100, seed=22)]
    prompts = [None, voice_prompt(37)]
    alone = [audio(pipeline, t, seed=i, stream=True, prompt=p) for i, (t, p) in enumerate(zip(token_lists, prompts))]
    generators = [
        pipeline.tokens_to_audio(iter(t), seed=i, stream=True, prompt=p)
        for i, (t, p) in enumerate(zip(token_lists, prompts))
    ]
    interleaved: list[list[np.ndarray]] = [[], []]
    for pair in zip_longest(*generators):
        for index, chunk in enumerate(pair):
            if chunk is not None:
                interleaved[index].append(chunk)
    for expected, actual in zip(alone, interleaved):
        assert len(expected) == len(actual) > 1
        assert all(np.array_equal(e, a) for e, a in zip(expected, actual))


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_speed_changes_offline_length(pipeline, speed):
    tokens = random_tokens(60, seed=7)
    normal = audio(pipeline, tokens, stream=False)[0]
    changed = audio(pipeline, tokens, stream=False, speed=speed)[0]
    assert len(normal) == 120 * FRAME
    assert len(changed) == int(120 / speed) * FRAME  # upstream: interpolate the mel to int(T / speed)


def test_prompt_voice_differs_from_the_preset_speaker(pipeline):
    tokens = random_tokens(60, seed=8)
    preset = audio(pipeline, tokens, stream=False)[0]
    prompted = audio(pipeline, tokens, stream=False, prompt=voice_prompt(20))[0]
    assert preset.shape == prompted.shape and not np.allclose(preset, prompted)


def test_unknown_speaker_is_not_found(pipeline):
    with pytest.raises(NotFound, match="no-such-speaker"):
        next(pipeline.tokens_to_audio(iter(random_tokens(10, seed=0)), speaker_id="no-such-speaker"))
    with pytest.raises(NotFound, match="no-such-speaker"):
        next(pipeline.synthesize("Hello.", speaker_id="no-such-speaker", stream=True))
    assert not pipeline.engine.has_unfinished()  # the rejected request never reached the LLM
    assert len(list(pipeline.synthesize("Hello.", speaker_id="default"))) == 1


def test_malformed_prompt_is_invalid(pipeline):
    good = voice_prompt(10)
    bad_mel = VoicePrompt(good.prompt_tokens, good.prompt_mel[:-1], good.speaker_embedding)
    bad_embedding = VoicePrompt(good.prompt_tokens, good.prompt_mel, good.speaker_embedding[:100])
    for prompt in (bad_mel, bad_embedding):
        with pytest.raises(InvalidRequest, match="prompt"):
            next(pipeline.tokens_to_audio(iter(random_tokens(10, seed=0)), prompt=prompt))
