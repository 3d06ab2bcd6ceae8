"""Encoder, estimator and their tables alone against the reference modules (tighter checks)."""

from __future__ import annotations

import pytest
import torch

from services.flow.model.cfm import reference_start_noise, time_grid
from services.flow.model.encoder_layers import relative_position_table
from services.flow.model.masks import attention_mask, chunk_mask
from tests.reference import ref

TIGHT = 2e-5


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("finalize", [False, True])
def test_encoder_matches_reference(reference_flow, our_flow, streaming, finalize):
    generator = torch.Generator().manual_seed(21)
    xs = torch.randn(1, 61, 512, generator=generator)
    lengths = torch.tensor([61])
    with torch.inference_mode():
        if finalize:
            expected, _ = reference_flow.encoder(xs, lengths, streaming=streaming)
        else:  # the reference takes the withheld look-ahead tokens as a separate context
            expected, _ = reference_flow.encoder(xs[:, :-3], lengths, context=xs[:, -3:], streaming=streaming)
        actual, actual_lens = our_flow.encoder(xs, lengths, streaming=streaming, finalize=finalize)
    assert actual.shape == expected.shape
    assert actual_lens.tolist() == [expected.size(1)]
    assert (actual - expected).abs().max().item() <= TIGHT


@pytest.mark.parametrize("streaming", [False, True])
def test_estimator_matches_reference_on_a_padded_batch(reference_flow, our_flow, streaming):
    generator = torch.Generator().manual_seed(22)
    frames, lengths = 130, torch.tensor([130, 77])
    mask = (torch.arange(frames) < lengths[:, None]).float().unsqueeze(1)
    x, mu, cond = (torch.randn(2, 80, frames, generator=generator) * mask for _ in range(3))
    t = torch.tensor([0.3, 0.8])
    spks = torch.randn(2, 80, generator=generator)
    with torch.inference_mode():
        expected = reference_flow.decoder.estimator(x, mask, mu, t, spks, cond, streaming=streaming)
        actual = our_flow.decoder.estimator(x, mask, mu, t, spks, cond, streaming=streaming)
    assert (actual - expected).abs().max().item() <= TIGHT


def test_relative_position_table_equals_reference():
    embedding = ref("cosyvoice.transformer.embedding")
    reference = embedding.EspnetRelPositionalEncoding(512, 0.0)
    for length in (1, 37, 250):
        expected = reference.position_encoding(offset=0, size=length)
        assert torch.equal(relative_position_table(length, 512, torch.device("cpu"), torch.float32), expected)


def test_fixed_noise_is_identical_to_reference(reference_flow, our_flow):
    assert torch.equal(reference_start_noise(), reference_flow.decoder.rand_noise)
    assert torch.equal(our_flow.decoder.rand_noise, reference_flow.decoder.rand_noise)
    assert our_flow.decoder.rand_noise.shape == (1, 80, 15000)


def test_noise_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    reference_start_noise()
    assert torch.equal(torch.rand(3), expected)


def test_cosine_time_grid():
    grid = time_grid(10, "cosine", torch.device("cpu"), torch.float32)
    k = torch.arange(11, dtype=torch.float64)
    assert torch.allclose(grid.double(), 1 - torch.cos(k / 10 * torch.pi / 2), atol=1e-7)
    assert torch.allclose(time_grid(4, "linear", torch.device("cpu"), torch.float32), torch.linspace(0, 1, 5))


@pytest.mark.parametrize("size,chunk", [(1, 25), (24, 25), (25, 25), (26, 25), (120, 50)])
def test_chunk_mask_equals_reference(size, chunk):
    mask_utils = ref("cosyvoice.utils.mask")
    expected = mask_utils.subsequent_chunk_mask(size, chunk)
    actual = chunk_mask(size, chunk)
    assert actual.shape == (size, size)
    assert torch.equal(actual, expected)


def test_batched_attention_mask_equals_reference_per_item():
    mask_utils = ref("cosyvoice.utils.mask")
    lengths, frames = torch.tensor([60, 33]), 60
    pad = ~mask_utils.make_pad_mask(lengths, frames).unsqueeze(1)  # (B, 1, T)
    dummy = torch.zeros(2, frames, 1)
    chunked = mask_utils.add_optional_chunk_mask(dummy, pad, False, False, 0, 25, -1)
    full = mask_utils.add_optional_chunk_mask(dummy, pad, False, False, 0, 0, -1).expand(-1, frames, -1)

    mixed = attention_mask(lengths, frames, 25, torch.tensor([True, False]))
    assert mixed.shape == (2, 1, frames, frames)
    assert torch.equal(mixed[0, 0], chunked[0]) and torch.equal(mixed[1, 0], full[1])
    assert attention_mask(torch.tensor([60, 60]), frames, 25, torch.tensor([False, False])) is None
