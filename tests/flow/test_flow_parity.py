"""End-to-end flow parity with the reference: offline, and every call of a streaming schedule."""

from __future__ import annotations

import pytest
import torch

from tests.flow.conftest import MEL_TOLERANCE, make_request, run_both, upstream_chunk_schedule

# (target tokens, prompt tokens): zero-shot with a prompt, and the sft case without one.
CASES = {"prompt": (130, 7), "sft": (104, 0)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_offline_mel_matches_reference(reference_flow, our_flow, case):
    n_tokens, n_prompt = CASES[case]
    request = make_request(n_tokens, n_prompt, seed=11)
    expected, actual = run_both(reference_flow, our_flow, request, None, streaming=False, finalize=True)
    assert actual.shape == expected.shape == (1, 80, 2 * n_tokens)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max().item() <= MEL_TOLERANCE


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_streaming_chunk_matches_reference(reference_flow, our_flow, case):
    n_tokens, n_prompt = CASES[case]
    request = make_request(n_tokens, n_prompt, seed=12)
    schedule = upstream_chunk_schedule(n_tokens, n_prompt)
    assert len(schedule) >= 3 and not schedule[0].finalize and schedule[-1].finalize
    for chunk in schedule:
        # As the reference orchestrator calls it: chunked attention only for non-final calls.
        expected, actual = run_both(reference_flow, our_flow, request, chunk.n_tokens,
                                    streaming=not chunk.finalize, finalize=chunk.finalize)
        assert actual.shape == expected.shape
        emitted = slice(2 * chunk.token_offset, None)
        assert (actual[:, :, emitted] - expected[:, :, emitted]).abs().max().item() <= MEL_TOLERANCE, chunk
        assert (actual - expected).abs().max().item() <= MEL_TOLERANCE, chunk


def test_streaming_with_finalize_matches_reference(reference_flow, our_flow):
    """The reference's own self-test combination: chunk masks with the zero look-ahead."""
    request = make_request(60, 11, seed=13)
    expected, actual = run_both(reference_flow, our_flow, request, None, streaming=True, finalize=True)
    assert (actual - expected).abs().max().item() <= MEL_TOLERANCE
