"""Finalize / look-ahead semantics and the streaming properties the orchestrator relies on."""

from __future__ import annotations

import pytest
import torch

from services.flow.model.masks import FlowInputError
from tests.flow.conftest import make_request, upstream_chunk_schedule


def test_output_lengths_follow_finalize(our_flow):
    request = make_request(40, 7, seed=41)
    final = our_flow.inference(*request.args(), streaming=False, finalize=True)
    partial = our_flow.inference(*request.args(), streaming=True, finalize=False)
    assert final.shape == (1, 80, 2 * 40)
    assert partial.shape == (1, 80, 2 * (40 - 3))  # the 3 look-ahead tokens make no frames


def test_lookahead_tokens_only_reach_their_own_chunk(our_flow):
    """Non-final: the withheld tokens feed the look-ahead conv of the last 3 kept tokens. With
    chunk masks, frames of earlier chunks cannot see them; the last chunk's frames do."""
    request = make_request(53, 0, seed=42)  # 50 kept tokens = 2 encoder chunks of 25
    changed = make_request(53, 0, seed=42)
    changed.token[:, -3:] = (changed.token[:, -3:] + 1000) % 6561
    mel = our_flow.inference(*request.args(), streaming=True, finalize=False)
    mel_changed = our_flow.inference(*changed.args(), streaming=True, finalize=False)
    assert mel.shape == (1, 80, 100)
    assert torch.allclose(mel[:, :, :50], mel_changed[:, :, :50], atol=1e-6)
    assert (mel[:, :, 50:] - mel_changed[:, :, 50:]).abs().max().item() > 1e-3


def test_finalize_uses_zeros_not_tokens_as_lookahead(our_flow):
    """finalize=True over N tokens == non-final over N + 3 only if the look-ahead were zero:
    the last frames must differ, since a real context replaced the zeros."""
    request = make_request(53, 0, seed=43)
    final = our_flow.inference(*request.args(50), streaming=True, finalize=True)
    partial = our_flow.inference(*request.args(53), streaming=True, finalize=False)
    assert final.shape == partial.shape == (1, 80, 100)
    assert torch.allclose(final[:, :, :50], partial[:, :, :50], atol=1e-5)
    assert (final[:, :, 50:] - partial[:, :, 50:]).abs().max().item() > 1e-3


def test_emitted_frames_do_not_change_in_later_streaming_calls(our_flow):
    """Chunk masks from the prompt start + causal convs + fixed noise: what a streaming call
    emits is what the next streaming call computes for the same frames."""
    n_tokens, n_prompt = 130, 7
    request = make_request(n_tokens, n_prompt, seed=44)
    calls = [c for c in upstream_chunk_schedule(n_tokens, n_prompt) if not c.finalize]
    mels = [our_flow.inference(*request.args(c.n_tokens), streaming=True, finalize=False) for c in calls]
    for earlier, later, next_call in zip(mels, mels[1:], calls[1:]):
        settled = 2 * next_call.token_offset  # frames handed out before the later call
        assert torch.allclose(earlier[:, :, :settled], later[:, :, :settled], atol=1e-4)


def test_too_few_tokens_for_the_lookahead_is_a_named_error(our_flow):
    request = make_request(3, 0, seed=45)
    with pytest.raises(FlowInputError, match="token_len"):
        our_flow.inference(*request.args(), streaming=True, finalize=False)


@pytest.mark.parametrize(
    "field,mutate",
    [
        ("token_len", lambda a: a.__setitem__(1, torch.tensor([99]))),
        ("prompt_feat", lambda a: a.__setitem__(4, torch.zeros(1, 14, 81))),
        ("embedding", lambda a: a.__setitem__(6, torch.zeros(2, 192))),
        ("prompt_feat_len", lambda a: a.__setitem__(5, torch.tensor([-1]))),
    ],
)
def test_bad_inputs_name_the_argument(our_flow, field, mutate):
    args = list(make_request(20, 7, seed=46).args())
    mutate(args)
    with pytest.raises(FlowInputError, match=field):
        our_flow.inference(*args, streaming=False, finalize=True)


def test_batch_flags_must_match_the_batch(our_flow):
    with pytest.raises(FlowInputError, match="streaming"):
        our_flow.inference(*make_request(20, 7, seed=47).args(), streaming=[True, False], finalize=True)
