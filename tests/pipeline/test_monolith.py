"""The in-process monolith: the stage runners and chunk schedule in one process, no gRPC."""

import asyncio

import numpy as np
import pytest

from services.common.errors import NotFound
from services.common.pumps import SynthesisJob
from services.flow.config import FlowServiceConfig
from services.llm.config import LLMServiceConfig
from services.pipeline.library import CosyVoicePipeline
from services.pipeline.monolith import MonolithPipeline
from services.vocoder.config import VocoderServiceConfig
from tests.waiting import eventually

TEXT = "Hello world, this is a test."


@pytest.fixture
async def monolith(tiny_model_dir):
    configs = [cls(model_dir=tiny_model_dir, num_threads=1)
               for cls in (LLMServiceConfig, FlowServiceConfig, VocoderServiceConfig)]
    monolith = await MonolithPipeline.start(*configs)
    yield monolith
    await monolith.close()


@pytest.fixture(scope="module")
def library(tiny_model_dir):
    return CosyVoicePipeline.from_model_dir(tiny_model_dir)


async def _pieces(monolith, text=TEXT, seed=3, stream=True, speaker_id=""):
    return [p async for p in monolith.run(SynthesisJob(f"r{seed}", text, speaker_id, seed, stream))]


def _state(monolith):
    return monolith.llm.num_active_requests, monolith.flow.num_sessions, monolith.vocoder.num_streams


async def test_streaming_output_equals_the_library_chunk_for_chunk(monolith, library):
    pieces = await _pieces(monolith, seed=3)
    expected = list(library.synthesize(TEXT, seed=3, stream=True))
    assert len(pieces) == len(expected) > 2
    for piece, chunk in zip(pieces, expected):
        # The monolith's flow decodes non-final chunks incrementally (docs/incremental-flow.md), the
        # library re-runs the prefix: equal up to float rounding, not bit for bit (seen: 4e-8).
        np.testing.assert_allclose(piece.samples, chunk, rtol=0, atol=1e-6)
        assert piece.sample_rate == library.sample_rate
    assert [p.is_final for p in pieces] == [False] * (len(pieces) - 1) + [True]
    timings = pieces[0].timings  # the same first-chunk accounting as the gateway
    assert timings is not None and all(p.timings is None for p in pieces[1:])
    assert timings.llm_seconds > 0 and timings.flow_seconds > 0 and timings.vocoder_seconds > 0
    assert _state(monolith) == (0, 0, 0)


async def test_non_streaming_is_one_piece_of_the_offline_synthesis(monolith, library):
    pieces = await _pieces(monolith, seed=5, stream=False)
    assert len(pieces) == 1 and pieces[0].is_final
    np.testing.assert_array_equal(pieces[0].samples, next(library.synthesize(TEXT, seed=5, stream=False)))


async def test_concurrent_requests_complete_and_each_matches_its_own_seed(monolith, library):
    texts = ["Hello world.", "Hi.", "Good morning."]
    results = await asyncio.gather(*(_pieces(monolith, text, seed) for seed, text in enumerate(texts)))
    for seed, (text, pieces) in enumerate(zip(texts, results)):
        expected = np.concatenate(list(library.synthesize(text, seed=seed, stream=True)))
        got = np.concatenate([p.samples for p in pieces])
        assert pieces[-1].is_final and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)  # batched with others: padding, same values
    assert _state(monolith) == (0, 0, 0)


async def test_leaving_early_frees_every_stage(monolith):
    pieces = monolith.run(SynthesisJob("early", TEXT * 3, "", 1))
    first = await anext(pieces)
    assert not first.is_final
    await pieces.aclose()
    await eventually(lambda: _state(monolith) == (0, 0, 0), what="every stage freeing the request")


async def test_a_stage_error_surfaces_and_the_request_is_freed(monolith):
    with pytest.raises(NotFound):
        await _pieces(monolith, speaker_id="nobody")
    await eventually(lambda: _state(monolith) == (0, 0, 0), what="every stage freeing the request")
    assert len(await _pieces(monolith, text="Hi.")) >= 1  # and it still serves
