"""VocoderStream against the reference's own streaming `CosyVoice2Model.token2wav` (flow stubbed
to replay given mels), chunk by chunk, with the same seed."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from services.common.modeldir.layout import ModelDir
from services.vocoder.model.loader import load_hift
from services.vocoder.model.streaming import VocoderStream, VocoderStreamError, vocode_batch
from tests.reference.hift import reference_stream

# The reference's fade_in_out multiplies a tensor by a numpy window, which numpy 2 flags.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

TOLERANCE = 1e-4
OVERLAP = 8 * 480  # upstream's source_cache_len


@pytest.fixture()
def ours(
    reference_hift: torch.nn.Module, make_model_dir: Callable[..., ModelDir]
) -> torch.nn.Module:
    return load_hift(make_model_dir(dict(reference_hift.state_dict())))


def _chunks(frame_counts: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 80, frames, generator=generator) for frames in frame_counts]


# First chunks as upstream makes them (2·(hop + pad) frames), then growing hops, a short tail.
@pytest.mark.parametrize("frame_counts", [[10, 20, 30, 6], [16], [8, 0], [12, 50]])
def test_chunks_match_reference_token2wav(
    frame_counts: list[int], ours: torch.nn.Module, reference_hift: torch.nn.Module
) -> None:
    chunks = _chunks(frame_counts)
    expected = reference_stream(reference_hift, chunks, seed=42)
    stream = VocoderStream(ours, generator=torch.Generator().manual_seed(42))
    for index, (chunk, want) in enumerate(zip(chunks, expected)):
        got = stream.push(chunk, final=index == len(chunks) - 1)
        assert got.shape == (want.shape[1],), f"chunk {index}"
        torch.testing.assert_close(got, want[0], atol=TOLERANCE, rtol=0, msg=f"chunk {index}")
    assert stream.finished
    assert stream.samples_emitted == sum(frame_counts) * 480


def test_emitted_lengths_hold_back_the_overlap(ours: torch.nn.Module) -> None:
    stream = VocoderStream(ours, generator=torch.Generator().manual_seed(0))
    assert not stream.has_cache
    sizes = [stream.push(chunk).numel() for chunk in _chunks([10, 20])]
    assert sizes == [10 * 480 - OVERLAP, 20 * 480]
    assert stream.has_cache
    assert stream.push(_chunks([4])[0], final=True).numel() == 4 * 480 + OVERLAP
    assert not stream.has_cache and stream.finished


def test_vocode_batch_equals_separate_pushes(ours: torch.nn.Module) -> None:
    # Two requests in step plus one at a different length: two groups, three generators.
    plan = [[10, 20, 6], [10, 20, 6], [14, 20, 8]]
    per_request = [_chunks(counts, seed=i) for i, counts in enumerate(plan)]
    separate = [VocoderStream(ours, torch.Generator().manual_seed(i)) for i in range(3)]
    batched = [VocoderStream(ours, torch.Generator().manual_seed(i)) for i in range(3)]
    for step in range(3):
        final = step == 2
        mels = [chunks[step] for chunks in per_request]
        outputs = vocode_batch(batched, mels, [final] * 3)
        for stream, mel, output in zip(separate, mels, outputs):
            expected = stream.push(mel, final=final)
            assert output.shape == expected.shape
            assert (output - expected).abs().max().item() <= TOLERANCE


def test_state_is_per_stream(ours: torch.nn.Module) -> None:
    chunks = _chunks([10, 12])
    alone = VocoderStream(ours, torch.Generator().manual_seed(1))
    expected = [alone.push(chunks[0]), alone.push(chunks[1], final=True)]
    first = VocoderStream(ours, torch.Generator().manual_seed(1))
    other = VocoderStream(ours, torch.Generator().manual_seed(2))
    got = [first.push(chunks[0])]
    other.push(_chunks([16], seed=9)[0])  # interleaved request must not disturb the first
    got.append(first.push(chunks[1], final=True))
    for want, have in zip(expected, got):
        assert torch.equal(want, have)


def test_speed_stretches_a_single_final_chunk(ours: torch.nn.Module) -> None:
    stream = VocoderStream(ours, torch.Generator().manual_seed(0))
    assert stream.push(_chunks([20])[0], final=True, speed=2.0).numel() == 10 * 480
    streaming = VocoderStream(ours, torch.Generator().manual_seed(0))
    streaming.push(_chunks([10])[0])
    with pytest.raises(VocoderStreamError, match="speed"):
        streaming.push(_chunks([10])[0], final=True, speed=1.5)


@pytest.mark.parametrize(
    ("mel", "final", "message"),
    [
        (torch.zeros(1, 80, 5), False, "at least 8 frame"),
        (torch.zeros(1, 80, 0), True, "at least 1 frame"),
        (torch.zeros(2, 80, 10), False, "mel must have shape"),
        (torch.zeros(1, 81, 10), False, "mel must have shape"),
    ],
)
def test_bad_chunks_are_rejected(
    ours: torch.nn.Module, mel: torch.Tensor, final: bool, message: str
) -> None:
    with pytest.raises(VocoderStreamError, match=message):
        VocoderStream(ours).push(mel, final=final)


def test_no_chunk_after_the_final_one_and_abort_recovers(ours: torch.nn.Module) -> None:
    stream = VocoderStream(ours, torch.Generator().manual_seed(0))
    stream.prepare(_chunks([10])[0])
    with pytest.raises(VocoderStreamError, match="prepare called twice"):
        stream.prepare(_chunks([10])[0])
    stream.abort()
    stream.push(_chunks([10])[0], final=True)
    with pytest.raises(VocoderStreamError, match="final chunk"):
        stream.push(_chunks([10])[0])
