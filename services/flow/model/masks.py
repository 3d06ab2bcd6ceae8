"""Padding and streaming-chunk attention masks shared by the flow encoder and estimator.

All masks are boolean with True = may attend. Streaming chunks are counted from index 0 of
the sequence (the start of the prompt), and every chunk sees all chunks to its left: the
reference passes num_left_chunks = -1 everywhere, whatever the yaml's
`num_decoding_left_chunks` says.
"""

from __future__ import annotations

from typing import Sequence

import torch


class FlowInputError(ValueError):
    """Inputs the flow cannot run on; the message names the argument."""


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at the valid (non-padding) positions of each row."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def chunk_mask(size: int, chunk_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size, size) bool: row i sees every column before the end of i's chunk."""
    position = torch.arange(size, device=device)
    chunk_end = (torch.div(position, chunk_size, rounding_mode="floor") + 1) * chunk_size
    return position.unsqueeze(0) < chunk_end.unsqueeze(1)


def batch_flags(value: bool | Sequence[bool] | torch.Tensor, batch: int, field: str) -> torch.Tensor:
    """A per-item bool flag (e.g. `streaming`) as a (B,) CPU tensor; a plain bool applies to all."""
    if isinstance(value, bool):
        return torch.full((batch,), value, dtype=torch.bool)
    flags = torch.as_tensor(value, dtype=torch.bool).flatten().cpu()
    if flags.numel() != batch:
        raise FlowInputError(f"{field} has {flags.numel()} flags for a batch of {batch}")
    return flags


def attention_mask(
    lengths: torch.Tensor, max_len: int, chunk_size: int, streaming: torch.Tensor
) -> torch.Tensor | None:
    """(B, 1, T, T) bool self-attention mask, or None when every position may see every other.

    Items with `streaming` get the chunk mask, the others full attention; padding keys are
    masked for both. Query rows that are padding still see at least key 0, so no softmax row
    is empty (an empty row would give NaN that leaks through `0 * NaN` in later matmuls).
    """
    padded = bool((lengths < max_len).any())
    if not padded and not bool(streaming.any()):
        return None
    mask = length_mask(lengths, max_len)[:, None, None, :]  # (B, 1, 1, T)
    if bool(streaming.any()):
        chunks = chunk_mask(max_len, chunk_size, lengths.device)
        per_item = torch.where(streaming.to(lengths.device)[:, None, None], chunks, True)
        mask = mask & per_item.unsqueeze(1)
    return mask.expand(-1, -1, max_len, -1)


def window_attention_mask(start: int, length: int, chunk_size: int, device: torch.device | None = None
                          ) -> torch.Tensor | None:
    """(1, 1, length - start, length) bool mask of window queries [start, length) over all keys
    [0, length) of one stream, chunked like `chunk_mask`; None when chunk_size is 0 (full)."""
    if chunk_size <= 0:
        return None
    rows = torch.arange(start, length, device=device)
    chunk_end = (torch.div(rows, chunk_size, rounding_mode="floor") + 1) * chunk_size
    return (torch.arange(length, device=device).unsqueeze(0) < chunk_end.unsqueeze(1)).view(1, 1, -1, length)


def stacked_window_mask(starts: list[int], widths: list[int], chunk_size: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """(B, 1, W, P + W) bool: stream i's window queries (absolute starts[i] + r, r < W, padded
    to the widest W) over its cached keys (the first starts[i] of P = max(starts), the rest
    padding) and the padded window's keys, chunked like `chunk_mask`. Padding rows still see
    their stream's first window key, so no softmax row is empty."""
    start = torch.tensor(starts, device=device).view(-1, 1)
    width = torch.tensor(widths, device=device).view(-1, 1)
    longest_past, longest = max(starts), max(widths)
    offsets = torch.arange(longest, device=device).view(1, -1)
    rows = start + offsets  # (B, W) absolute query positions
    chunk_end = (torch.div(rows, chunk_size, rounding_mode="floor") + 1) * chunk_size
    past = (torch.arange(longest_past, device=device).view(1, 1, -1) < start.unsqueeze(2))
    window = (rows.unsqueeze(1) < chunk_end.unsqueeze(2)) & (offsets.unsqueeze(1) < width.unsqueeze(2))
    past = past.expand(-1, longest, -1)
    return torch.cat([past, window], dim=2).unsqueeze(1)
