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

import torch
from torch import nn


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
        self._staged[module] = ("conv", (full,), context)
        return full

    def keys_values(self, module: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's k, v (B, H, W, d) behind the cached ones: (B, H, P + W, d)."""
        self._staged[module] = ("kv", (k, v), 0)
        past = self._past.get(module)
        if past is None:
            return k, v
        return torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)

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
