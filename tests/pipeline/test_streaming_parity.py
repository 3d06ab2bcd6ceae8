"""Our streaming pipeline against the reference's own streaming call sequence.

The oracle is the vendored `CosyVoice2Model.tts` (`cosyvoice/cli/model.py`) over reference
modules strictly loaded from the tiny model directory, with upstream's growing hop recreated
and the hop reset per request (`tests.reference.cosyvoice2.ReferenceTTS`). Both sides get the
same fixed speech tokens; every token2wav call is compared: the token count, offset and flags,
the flow's mel after slicing, the vocoder's input/cache/output, and the emitted audio.

The vocoder draws fresh noise on every call. To compare audio call by call independently of
RNG protocols, the reference's source excitation is injected into our HiFT
(`HiFTGenerator.inference(source=...)`); `test_seeded_rng_protocol_matches_without_injection`
checks separately that our per-request generator draws what the reference's seeded global RNG
draws.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest
import torch

import services.pipeline.library as library
from services.common.modeldir.layout import ModelDir
from services.flow.api import VoicePrompt
from services.pipeline.library import CosyVoicePipeline
from tests.reference.cosyvoice2 import ReferenceRun, ReferenceTTS

TOLERANCE = 1e-4
TEXT = "Streaming parity: the same tokens through the reference and through our pipeline."
NUM_TOKENS = 290  # hops 25, 50, 100, 100 (capped), then a final chunk of 15
NUM_PROMPT_TOKENS = 37  # the first hop is padded to 38 so that prompt + hop = 75
SAMPLES_PER_FRAME = 480
OVERLAP = 8 * SAMPLES_PER_FRAME  # upstream source_cache_len


def upstream_schedule(num_tokens: int, num_prompt: int) -> list[tuple[int, int, bool]]:
    """(tokens passed, token_offset, finalize) of upstream `tts(stream=True)` with the hop
    growing 25 → 50 → 100 from 25 at the start of the request (cosyvoice-facts §6.2)."""
    hop, lookahead = 25, 3
    pad = math.ceil(num_prompt / hop) * hop - num_prompt
    calls, offset = [], 0
    while num_tokens - offset >= (this_hop := hop + pad if offset == 0 else hop) + lookahead:
        calls.append((offset + this_hop + lookahead, offset, False))
        offset += this_hop
        hop = min(100, hop * 2)
    return calls + [(num_tokens, offset, True)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> ReferenceTTS:
    return ReferenceTTS.from_model_dir(ModelDir.open(tiny_model_dir))


@pytest.fixture(scope="module")
def tokens(pipeline: CosyVoicePipeline) -> list[int]:
    """Speech tokens our LLM samples for TEXT; should it stop early (the random tiny LLM
    rarely does), seeded random ids fill up to NUM_TOKENS."""
    generated = pipeline.speech_tokens(TEXT, seed=1)
    try:
        result = [token for _, token in zip(range(NUM_TOKENS), generated)]
    finally:
        generated.close()  # aborts the request in the engine
    filler = torch.randint(0, 6561, (NUM_TOKENS - len(result),), generator=torch.Generator().manual_seed(1))
    return result + filler.tolist()


@dataclass(frozen=True)
class Voice:
    """One voice in both argument styles: the reference's (batched tensors) and ours."""

    embedding: torch.Tensor  # (1, 192)
    prompt_tokens: torch.Tensor | None  # (1, P) int32
    prompt_mel: torch.Tensor | None  # (1, 2P, 80)
    speaker_id: str | None = None
    prompt: VoicePrompt | None = None

    def reference_kwargs(self) -> dict[str, torch.Tensor | None]:
        return {"embedding": self.embedding, "prompt_tokens": self.prompt_tokens, "prompt_mel": self.prompt_mel}

    def our_kwargs(self) -> dict[str, object]:
        return {"speaker_id": self.speaker_id, "prompt": self.prompt}

    @property
    def num_prompt_tokens(self) -> int:
        return 0 if self.prompt_tokens is None else self.prompt_tokens.shape[1]


@pytest.fixture(scope="module")
def sft_voice(tiny_model_dir) -> Voice:
    """The preset speaker as upstream's sft mode reads it: spk2info's (1, 192) embedding."""
    spk2info = torch.load(tiny_model_dir / "spk2info.pt", weights_only=True)
    return Voice(spk2info["default"]["embedding"], None, None, speaker_id="default")


@pytest.fixture(scope="module")
def prompt_voice() -> Voice:
    generator = torch.Generator().manual_seed(37)
    prompt_tokens = torch.randint(0, 6561, (1, NUM_PROMPT_TOKENS), generator=generator, dtype=torch.int32)
    prompt_mel = torch.randn(1, 2 * NUM_PROMPT_TOKENS, 80, generator=generator) * 2 - 5  # log-mel-like
    embedding = torch.randn(1, 192, generator=generator) * 3
    prompt = VoicePrompt(prompt_tokens[0].numpy(), prompt_mel[0].numpy(), embedding[0].numpy())
    return Voice(embedding, prompt_tokens, prompt_mel, speaker_id="no-such-speaker", prompt=prompt)


@dataclass
class OurCall:
    num_tokens: int
    token_offset: int
    finalize: bool
    mel: torch.Tensor  # (80, frames) after slicing at token_offset


@dataclass
class OurVocoderCall:
    mel: torch.Tensor  # (80, frames): cached + new
    cache_source: torch.Tensor | None
    speech: torch.Tensor  # (samples,) before the crossfade
    source: torch.Tensor  # (1, 1, samples)


@dataclass
class OurRun:
    calls: list[OurCall]
    vocoder_calls: list[OurVocoderCall]
    emitted: list[np.ndarray]

    @property
    def schedule(self) -> list[tuple[int, int, bool]]:
        return [(c.num_tokens, c.token_offset, c.finalize) for c in self.calls]


@contextlib.contextmanager
def recording(pipeline: CosyVoicePipeline, sources: list[torch.Tensor] | None) -> Iterator[OurRun]:
    """Record our flow and vocoder calls; with `sources`, inject them (one per vocoder call)."""
    run = OurRun([], [], [])
    decode, hift = library.decode_chunk_batch, pipeline.hift
    inference = hift.inference
    injected = iter(sources) if sources is not None else None

    def recording_decode(flow, jobs):  # noqa: ANN001
        mels = decode(flow, jobs)
        assert len(jobs) == 1
        job = jobs[0]
        run.calls.append(OurCall(len(job.tokens), job.offset, job.finalize, torch.from_numpy(mels[0]).clone()))
        return mels

    def recording_inference(mel, cache_source=None, generator=None, source=None):  # noqa: ANN001
        if injected is not None:
            source = next(injected)
        speech, used = inference(mel, cache_source=cache_source, generator=generator, source=source)
        cache = None if cache_source is None else cache_source.detach().clone()
        run.vocoder_calls.append(OurVocoderCall(mel[0].detach().clone(), cache, speech.reshape(-1).clone(), used.clone()))
        return speech, used

    library.decode_chunk_batch = recording_decode
    hift.inference = recording_inference  # instance attribute over the method
    try:
        yield run
    finally:
        library.decode_chunk_batch = decode
        del hift.inference


def run_ours(
    pipeline: CosyVoicePipeline,
    tokens: list[int],
    voice: Voice,
    *,
    stream: bool,
    speed: float = 1.0,
    seed: int = 0,
    sources: list[torch.Tensor] | None = None,
) -> OurRun:
    with recording(pipeline, sources) as run:
        run.emitted = list(
            pipeline.tokens_to_audio(iter(tokens), seed=seed, stream=stream, speed=speed, **voice.our_kwargs())
        )
    return run


def max_diff(a: torch.Tensor, b: torch.Tensor | np.ndarray) -> float:
    b = torch.as_tensor(b)
    assert a.shape == b.shape, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()


def compare(reference_run: ReferenceRun, ours: OurRun) -> list[dict[str, float]]:
    """Assert call-by-call parity; returns the max abs diffs per call (printed with -s)."""
    assert ours.schedule == reference_run.schedule
    assert len(ours.vocoder_calls) == len(ours.emitted) == len(reference_run.calls)
    diffs = []
    for index, (expected, flow, vocoder, emitted) in enumerate(
        zip(reference_run.calls, ours.calls, ours.vocoder_calls, ours.emitted)
    ):
        ref_cache = expected.cache_source if expected.cache_source.shape[-1] else None
        assert (vocoder.cache_source is None) == (ref_cache is None), f"call {index}: cache presence"
        diff = {
            "mel": max_diff(expected.mel, flow.mel),
            "hift_mel": max_diff(expected.hift_mel, vocoder.mel),
            "cache_source": 0.0 if ref_cache is None else max_diff(ref_cache, vocoder.cache_source),
            "speech": max_diff(expected.speech, vocoder.speech),
            "emitted": max_diff(expected.emitted, torch.from_numpy(emitted)),
        }
        assert max(diff.values()) <= TOLERANCE, f"call {index} {reference_run.schedule[index]}: {diff}"
        diffs.append(diff)
    print("\n" + "\n".join(f"  call {i} {reference_run.schedule[i]}: {d}" for i, d in enumerate(diffs)))
    return diffs


def streaming_parity(reference: ReferenceTTS, pipeline: CosyVoicePipeline, tokens: list[int], voice: Voice):
    reference_run = reference.run(tokens, stream=True, seed=0, **voice.reference_kwargs())
    assert all(call.stream is not call.finalize for call in reference_run.calls)  # final: full attention
    ours = run_ours(pipeline, tokens, voice, stream=True, sources=[c.source for c in reference_run.calls])
    compare(reference_run, ours)
    return reference_run, ours


def test_sft_streaming_matches_reference_call_by_call(reference, pipeline, tokens, sft_voice):
    reference_run, ours = streaming_parity(reference, pipeline, tokens, sft_voice)
    assert reference_run.schedule == upstream_schedule(NUM_TOKENS, 0) == [
        (28, 0, False), (78, 25, False), (178, 75, False), (278, 175, False), (290, 275, True),
    ]  # fmt: skip
    assert [c.hop_after for c in reference_run.calls] == [50, 100, 100, 100, 100]
    # What the client hears: chunk 0 holds back the crossfade overlap, the rest emit 2·hop frames.
    assert [len(a) for a in ours.emitted] == [50 * 480 - OVERLAP, 100 * 480, 200 * 480, 200 * 480, 30 * 480 + OVERLAP]


def test_prompt_streaming_matches_reference_call_by_call(reference, pipeline, tokens, prompt_voice):
    num_tokens = 230
    reference_run, ours = streaming_parity(reference, pipeline, tokens[:num_tokens], prompt_voice)
    # 37 prompt tokens: pad 13, so the first hop is 38 and prompt + hop = 75 (a multiple of 25).
    assert reference_run.schedule == upstream_schedule(num_tokens, NUM_PROMPT_TOKENS) == [
        (41, 0, False), (91, 38, False), (191, 88, False), (230, 188, True),
    ]  # fmt: skip
    assert len(ours.emitted[0]) == 2 * 38 * SAMPLES_PER_FRAME - OVERLAP


@pytest.mark.parametrize("num_tokens", [1, 20, 27])
def test_short_utterance_is_one_final_chunk(reference, pipeline, tokens, sft_voice, num_tokens):
    """Fewer than hop + look-ahead (28) tokens: no streaming chunk, one final full-attention call."""
    reference_run, ours = streaming_parity(reference, pipeline, tokens[:num_tokens], sft_voice)
    assert reference_run.schedule == [(num_tokens, 0, True)]
    assert [len(a) for a in ours.emitted] == [2 * num_tokens * SAMPLES_PER_FRAME]


@pytest.mark.parametrize(
    ("voice_name", "num_tokens", "speed"),
    [("sft_voice", NUM_TOKENS, 1.0), ("prompt_voice", 120, 1.0), ("sft_voice", 120, 1.5), ("sft_voice", 60, 0.7)],
)
def test_offline_matches_reference(request, reference, pipeline, tokens, voice_name, num_tokens, speed):
    voice = request.getfixturevalue(voice_name)
    reference_run = reference.run(tokens[:num_tokens], stream=False, speed=speed, seed=0, **voice.reference_kwargs())
    assert [(c.num_tokens, c.token_offset, c.stream, c.finalize) for c in reference_run.calls] == [
        (num_tokens, 0, False, True)
    ]
    ours = run_ours(
        pipeline, tokens[:num_tokens], voice, stream=False, speed=speed, sources=[reference_run.calls[0].source]
    )
    compare(reference_run, ours)
    assert len(ours.emitted[0]) == int(2 * num_tokens / speed) * SAMPLES_PER_FRAME


def test_consecutive_requests_keep_the_schedule(reference, pipeline, tokens, sft_voice):
    """With the per-request reset, a second request on the same reference model repeats the
    first one's schedule; ours does so by design. Without the reset (upstream's persistent
    `token_hop_len`, facts §10 quirk 1) the second request would start at a hop of 100."""
    num_tokens = 180
    first = reference.run(tokens[:num_tokens], stream=True, seed=0, **sft_voice.reference_kwargs())
    second = reference.run(tokens[:num_tokens], stream=True, seed=0, **sft_voice.reference_kwargs())
    assert first.hop_at_start == second.hop_at_start == 25
    assert first.schedule == second.schedule == upstream_schedule(num_tokens, 0)
    assert [c.emitted.tolist() for c in first.calls] == [c.emitted.tolist() for c in second.calls]

    persisted = reference.run(tokens[:num_tokens], stream=True, **sft_voice.reference_kwargs(), reset_hop=False)
    assert persisted.hop_at_start == 100
    assert persisted.schedule[0] == (103, 0, False)

    ours_first = run_ours(pipeline, tokens[:num_tokens], sft_voice, stream=True)
    ours_second = run_ours(pipeline, tokens[:num_tokens], sft_voice, stream=True)
    assert ours_first.schedule == ours_second.schedule == first.schedule
    assert [a.tolist() for a in ours_first.emitted] == [a.tolist() for a in ours_second.emitted]


def test_seeded_rng_protocol_matches_without_injection(reference, pipeline, tokens, sft_voice):
    """Reference: the global RNG seeded once per request (upstream `set_all_random_seed`);
    ours: `seed` → the request's generator. Both draw the vocoder's initial phases and noise
    in the same order, so the excitations and the audio agree without injection."""
    num_tokens = 80
    reference_run = reference.run(tokens[:num_tokens], stream=True, seed=11, **sft_voice.reference_kwargs())
    ours = run_ours(pipeline, tokens[:num_tokens], sft_voice, stream=True, seed=11)
    compare(reference_run, ours)
    for expected, actual in zip(reference_run.calls, ours.vocoder_calls):
        assert max_diff(expected.source, actual.source) <= TOLERANCE
