"""A padded batch of different requests gives each item exactly its batch-of-one result."""

from __future__ import annotations

import torch

from tests.flow.conftest import MEL_TOLERANCE, make_request


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    pads = [(0, 0) * (t.dim() - 2) + (0, width - t.size(1)) for t in tensors]
    return torch.cat([torch.nn.functional.pad(t, pad) for t, pad in zip(tensors, pads)])


def test_batch_of_different_requests_matches_each_alone(our_flow):
    # (target tokens, prompt tokens, streaming, finalize): a streaming chunk, an sft final
    # call and a final call with a longer prompt, all in one batch.
    items = [(40, 7, True, False), (23, 0, False, True), (31, 12, False, True)]
    requests = [make_request(n, p, seed=31 + i) for i, (n, p, _, _) in enumerate(items)]
    alone = [
        our_flow.inference(*request.args(), streaming=streaming, finalize=finalize)
        for request, (_, _, streaming, finalize) in zip(requests, items)
    ]

    def lengths(index: int, scale: int = 1) -> torch.Tensor:
        return torch.tensor([item[index] * scale for item in items])

    streaming, finalize = [item[2] for item in items], [item[3] for item in items]
    batched = our_flow.inference(
        _pad_stack([r.token for r in requests]), lengths(0),
        _pad_stack([r.prompt_token for r in requests]), lengths(1),
        _pad_stack([r.prompt_feat for r in requests]), lengths(1, 2),
        torch.cat([r.embedding for r in requests]),
        streaming=streaming, finalize=finalize,
    )  # fmt: skip
    out_lengths = our_flow.output_lengths(lengths(0), lengths(1), lengths(1, 2), finalize)
    assert out_lengths.tolist() == [mel.size(2) for mel in alone]
    assert batched.shape == (3, 80, max(out_lengths.tolist()))
    for index, mel in enumerate(alone):
        frames = mel.size(2)
        assert (batched[index, :, :frames] - mel[0]).abs().max().item() <= MEL_TOLERANCE
        assert not batched[index, :, frames:].any()  # padding past the item's length is zero


def test_encoder_batch_matches_each_alone(our_flow):
    generator = torch.Generator().manual_seed(32)
    xs = torch.randn(2, 57, 512, generator=generator)
    lengths = torch.tensor([57, 29])
    with torch.inference_mode():
        batched, batched_lens = our_flow.encoder(xs, lengths, streaming=[True, False], finalize=[False, True])
        first, _ = our_flow.encoder(xs[:1], lengths[:1], streaming=True, finalize=False)
        second, _ = our_flow.encoder(xs[1:, :29], lengths[1:], streaming=False, finalize=True)
    assert batched_lens.tolist() == [2 * (57 - 3), 2 * 29]
    assert (batched[:1, : first.size(1)] - first).abs().max().item() <= 1e-5
    assert (batched[1:, : second.size(1)] - second).abs().max().item() <= 1e-5
