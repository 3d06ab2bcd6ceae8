"""Per-layer left context for running a model over a window of frames after a cached prefix.

Chunk masks counted from position 0 and causal convs make the frames of complete chunks
independent of anything after them, so a streaming call can run only over a window that
starts at a chunk boundary, given what each layer saw of the frames before it: the keys and
values of every attention layer and the last k-1 inputs of every causal conv. One
`WindowCache` holds that for one forward pass (the encoder's token or frame stack, or one
ODE step of the estimator); `commit(keep)` then appends the first `keep` window frames (those
whose chunk is complete) and drops the rest, which the next call recomputes.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class LayerCache(Protocol):
    """What attention layers and causal convs ask of a cache (WindowCache, StackedWindowCaches)."""

    def conv_input(self, module: nn.Module, x: torch.Tensor, context: int) -> torch.Tensor: ...

    def keys_values(
        self, module: nn.Module, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class WindowCache:
    def __init__(self) -> None:
        self._past: dict[nn.Module, tuple[torch.Tensor, ...]] = {}
        self._staged: dict[nn.Module, tuple[str, tuple[torch.Tensor, ...], int]] = {}
        self._bytes = 0  # kept up to date: the runner sums every stream's caches after each chunk

    def conv_input(self, module: nn.Module, x: torch.Tensor, context: int) -> torch.Tensor:
        """x (B, C, W) with the conv's `context` earlier inputs in front (zeros before frame 0,
        exactly the causal left padding)."""
        past = self._past.get(module)
        left = past[0] if past is not None else x.new_zeros(x.size(0), x.size(1), context)
        full = torch.cat([left, x], dim=2)
        self.stage(module, "conv", (full,), context)
        return full

    def keys_values(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's k, v (B, H, W, d) behind the cached ones: (B, H, P + W, d)."""
        self.stage(module, "kv", (k, v), 0)
        past = self._past.get(module)
        if past is None:
            return k, v
        return torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)

    def past(self, module: nn.Module) -> tuple[torch.Tensor, ...] | None:
        return self._past.get(module)

    def stage(self, module: nn.Module, kind: str, tensors: tuple[torch.Tensor, ...], context: int) -> None:
        """This pass's inputs (conv: context + window) or keys/values (kv: window) of `module`."""
        self._staged[module] = (kind, tensors, context)

    def commit(self, keep: int) -> None:
        """Keep the state of the window's first `keep` frames; forget the rest of this pass."""
        for module, (kind, tensors, context) in self._staged.items():
            past = self._past.get(module)
            if kind == "conv":
                # The last `context` inputs before the new boundary (window frame `keep`).
                state: tuple[torch.Tensor, ...] = (tensors[0][:, :, keep : keep + context].clone(),)
            elif keep > 0:
                k, v = (t[:, :, :keep] for t in tensors)
                if past is not None:
                    k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
                state = (k.contiguous(), v.contiguous())
            else:
                continue
            self._bytes += _nbytes(state) - (_nbytes(past) if past is not None else 0)
            self._past[module] = state
        self._staged.clear()

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._past.clear()
        self._staged.clear()
        self._bytes = 0


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class StackedWindowCaches:
    """The caches of several streams (one ODE step each) for one batched estimator pass.

    Rows are the CFG layout [conditioned rows of streams 0..B-1, unconditioned rows of streams
    0..B-1], each stream's WindowCache holding its two rows. Stream i's window is the first
    widths[i] frames of the padded window; its cached keys are padded with zeros to the longest
    (the caller's attention mask hides them).
    """

    def __init__(self, caches: list[WindowCache], widths: list[int]) -> None:
        self.caches = caches
        self.widths = widths

    def _rows(self, index: int) -> list[int]:
        return [index, len(self.caches) + index]

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:  # per stream (2, ...) -> (2B, ...)
        return torch.cat([p[:1] for p in parts] + [p[1:] for p in parts])

    def conv_input(self, module: nn.Module, x: torch.Tensor, context: int) -> torch.Tensor:
        if len(self.caches) == 1 and self.widths[0] == x.size(2):  # nothing to pad: no extra copies
            return self.caches[0].conv_input(module, x, context)
        lefts = []
        for cache in self.caches:
            past = cache.past(module)
            lefts.append(past[0] if past is not None else x.new_zeros(2, x.size(1), context))
        full = torch.cat([self._stack(lefts), x], dim=2)
        for index, (cache, width) in enumerate(zip(self.caches, self.widths)):
            cache.stage(module, "conv", (full[self._rows(index), :, : context + width],), context)
        return full

    def keys_values(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.caches) == 1 and self.widths[0] == k.size(2):
            return self.caches[0].keys_values(module, k, v)
        pasts = [cache.past(module) for cache in self.caches]
        longest = max((p[0].size(2) for p in pasts if p is not None), default=0)
        empty = k.new_zeros(2, k.size(1), 0, k.size(3))
        padded_k, padded_v = [], []
        for index, (cache, width, past) in enumerate(zip(self.caches, self.widths, pasts)):
            rows = self._rows(index)
            cache.stage(module, "kv", (k[rows, :, :width], v[rows, :, :width]), 0)
            past_k, past_v = past if past is not None else (empty, empty)
            padded_k.append(F.pad(past_k, (0, 0, 0, longest - past_k.size(2))))
            padded_v.append(F.pad(past_v, (0, 0, 0, longest - past_v.size(2))))
        return torch.cat([self._stack(padded_k), k], dim=2), torch.cat([self._stack(padded_v), v], dim=2)
