"""RAS sampling for a whole decode batch at once, token-identical to `sample_next_token` per row.

What can be shared across rows is done once on the [N, V] matrix: the EOS masks, the softmax,
the top-k, the stable ordering of the candidates, the float32 nucleus prefix sums and the
draw. What cannot is the randomness: every request has its own generator, so each row draws
its own exponential noise (one small call per row). The draw reproduces
`torch.multinomial(p, 1, generator=g)`, which for one sample is `argmax(p / q)` with
`q = empty_like(p).exponential_(1, generator=g)` (tests/llm/test_batched_sampling.py checks
that this holds for the torch in use); so the noise must have the reference's candidate
count as its shape, exactly as the per-row code calls multinomial.

Rows whose k-th largest probability ties with a probability outside the top-k, and rows the
RAS window rejects, go through the per-row code (sampling.py): both are rare or cheap.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from services.llm.model.sampling import SamplingParams, nucleus_sample, random_sample, sample_next_token


class SampleRow(NamedTuple):
    """One row of a batch: its sampling settings, generator, RAS history and masked id.
    (A tuple: built once per sequence per step, where a frozen dataclass costs 4× more.)"""

    params: SamplingParams
    generator: torch.Generator
    history: Sequence[int]
    masked_token: int | None = None


def sample_batch(log_probs: torch.Tensor, rows: Sequence[SampleRow]) -> list[int]:
    """Next token of every row of `log_probs` [N, V] (any device/dtype); one host transfer.

    Same tokens, and the same generator states afterwards, as calling `sample_next_token`
    on each row in turn.
    """
    if len(rows) != log_probs.shape[0]:
        raise ValueError(f"{log_probs.shape[0]} log-prob rows but {len(rows)} sample rows")
    if not rows:
        return []
    if len(rows) == 1:  # one row: the per-row code has fewer, and cheaper, steps
        row = rows[0]
        return [sample_next_token(log_probs[0], row.history, row.params, row.generator, row.masked_token)]
    scores = log_probs.detach().to(device="cpu", dtype=torch.float32)
    masked = [(i, row.masked_token) for i, row in enumerate(rows) if row.masked_token is not None]
    if masked:
        if scores.data_ptr() == log_probs.data_ptr():
            scores = scores.clone()  # the caller's tensor stays untouched
        index = torch.tensor(masked, dtype=torch.long)
        scores[index[:, 0], index[:, 1]] = -float("inf")
    tokens = _nucleus_batch(scores, rows)
    # RAS: a nucleus token repeated too often in the window is masked and redrawn from the
    # full distribution, with the row's own generator (so the order across rows is free).
    for i, row in enumerate(rows):
        window = list(row.history[-row.params.win_size :])
        if window.count(tokens[i]) >= row.params.win_size * row.params.tau_r:
            line = scores[i].clone()  # scores may be the caller's tensor
            line[tokens[i]] = -float("inf")
            tokens[i] = random_sample(line, row.generator)
    return tokens


def _nucleus_batch(scores: torch.Tensor, rows: Sequence[SampleRow]) -> list[int]:
    """`nucleus_sample` of every row; `scores` [N, V] float32 CPU (not modified)."""
    n, vocab = scores.shape
    probs = scores.softmax(dim=-1)  # row by row the same kernel as the 1-D softmax
    ks = np.array([min(row.params.top_k, vocab) for row in rows], dtype=np.int64)
    kmax = int(ks.max())
    # One more than needed: a row whose k-th prob equals its (k+1)-th ties with an id outside
    # the top set, and the reference keeps the lowest tied ids, which topk does not promise.
    # Such a row takes the per-row path.
    values, ids = probs.topk(min(kmax + 1, vocab), dim=-1, sorted=True)
    ks_t = torch.from_numpy(ks)
    kth = values.gather(1, (ks_t - 1).unsqueeze(1)).squeeze(1)
    if kmax < vocab:
        beyond = values.gather(1, ks_t.clamp(max=vocab - 1).unsqueeze(1)).squeeze(1)
        exact = ((beyond != kth) | (ks_t == vocab)).tolist()
    else:
        exact = [True] * n
    values, ids = values[:, :kmax], ids[:, :kmax]
    # The reference's stable descending sort puts equal probs in ascending id order: order
    # the top set by id, then stable-sort it by prob.
    ids, by_id = ids.sort(dim=-1)
    values = values.gather(1, by_id)
    values, by_prob = values.sort(dim=-1, descending=True, stable=True)
    ids = ids.gather(1, by_prob)
    head = values.numpy()
    # float32 running sums, added left to right like the reference's one-by-one adds.
    prefix = np.add.accumulate(head, axis=1, dtype=np.float32)
    top_p = np.array([row.params.top_p for row in rows], dtype=np.float32)
    within = np.arange(kmax - 1)[None, :] < (ks - 1)[:, None]
    counts = 1 + np.count_nonzero((prefix[:, : kmax - 1] < top_p[:, None]) & within, axis=1)
    noise = torch.ones(n, kmax)
    draws = []
    for i, row in enumerate(rows):
        if exact[i]:
            # The same call multinomial makes inside: the noise's shape is the candidate count.
            draws.append(torch.empty(int(counts[i])).exponential_(1, generator=row.generator))
    if draws:
        columns = torch.arange(kmax).unsqueeze(0) < torch.from_numpy(counts).unsqueeze(1)
        columns &= torch.tensor(exact).unsqueeze(1)
        noise[columns] = torch.cat(draws)
        candidates = torch.where(columns, values, torch.zeros(()))
        choice = (candidates / noise).argmax(dim=1, keepdim=True)
        chosen = ids.gather(1, choice).squeeze(1).tolist()
    else:
        chosen = [0] * n
    for i, row in enumerate(rows):
        if not exact[i]:
            chosen[i] = nucleus_sample(scores[i], row.params.top_p, row.params.top_k, row.generator)
    return chosen
