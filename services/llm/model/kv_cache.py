"""A slot-based KV cache: one fixed-length row per running sequence, per layer.

Every attention layer only talks to the cache through `plan` / `write` / `read`, so a paged
cache (block tables instead of slots) can replace this class without touching the model.
A step's `AttentionPlan` is built once and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def long_tensor(values: list[int] | tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Host ids on `device` without a sync: `torch.tensor(values, device=cuda)` copies with a
    blocking cudaMemcpy, which waits for every kernel queued before it; an async copy from the
    host tensor only stages the bytes."""
    host = torch.tensor(values, dtype=torch.long)
    device = torch.device(device)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


class KVCacheError(ValueError):
    """A step that does not fit the cache (bad slot, or positions past max_model_len)."""


@dataclass
class AttentionPlan:
    """Where one forward step's tokens sit in the cache, and what each query may see.

    Row b holds `num_tokens[b]` real tokens at positions `starts[b] ...`; shorter rows are
    right-padded to the step's T. Padding writes land past the row's real tokens, where the
    next real token overwrites them before anything attends to them.
    """

    positions: torch.Tensor  # [B, T] long: RoPE positions, also the cache write positions
    kv_len: int  # keys 0 .. kv_len-1 are read for every row
    mask: torch.Tensor | None  # [B, 1, T, kv_len] bool (True = attend), None = attend to all
    slot_range: tuple[int, int] | None  # contiguous slots [a, b): the cache is sliced, not gathered
    slot_index: torch.Tensor  # [B] long
    uniform_start: int | None  # every row starts here: writes are one slice copy
    num_tokens: int  # T
    _grouped_masks: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def grouped_mask(self, group: int) -> torch.Tensor | None:
        """The mask for queries laid out as [B, kv_heads, group * T] (see Qwen2Attention)."""
        if self.mask is None:
            return None
        if group not in self._grouped_masks:
            self._grouped_masks[group] = self.mask.repeat(1, 1, group, 1)
        return self._grouped_masks[group]


class KVCache:
    """Per layer, K and V of shape [num_slots, num_kv_heads, max_model_len, head_dim]."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        max_model_len: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if num_slots < 1 or max_model_len < 1:
            raise KVCacheError(
                f"KV cache needs num_slots >= 1 and max_model_len >= 1, got {num_slots}, {max_model_len}"
            )
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.device = torch.device(device)
        shape = (num_slots, num_kv_heads, max_model_len, head_dim)
        # zeros, not empty: masked-out keys still enter the softmax as score + (-inf), and an
        # uninitialised NaN there would poison the whole row.
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]

    def plan(self, slots: list[int], starts: list[int], num_tokens: list[int]) -> AttentionPlan:
        """Plan one step: row b writes num_tokens[b] tokens at starts[b].. of its slot."""
        if not (len(slots) == len(starts) == len(num_tokens)) or not slots:
            raise KVCacheError("slots, starts and num_tokens must be non-empty and equally long")
        if any(not 0 <= slot < self.num_slots for slot in slots) or len(set(slots)) != len(slots):
            raise KVCacheError(f"slots {slots} are not distinct slots in [0, {self.num_slots})")
        if any(n < 1 for n in num_tokens) or any(s < 0 for s in starts):
            raise KVCacheError("every row needs num_tokens >= 1 and start >= 0")
        width = max(num_tokens)
        if max(starts) + width > self.max_model_len:
            raise KVCacheError(
                f"step needs positions up to {max(starts) + width - 1}, past max_model_len "
                f"{self.max_model_len}"
            )
        device = self.device
        positions = long_tensor(starts, device).unsqueeze(1) + torch.arange(width, device=device)
        kv_len = max(s + n for s, n in zip(starts, num_tokens))
        # A single-token step whose rows all end at kv_len needs no mask.
        needs_mask = width > 1 or any(s + 1 != kv_len for s in starts)
        mask = None
        if needs_mask:
            mask = torch.arange(kv_len, device=device) <= positions.unsqueeze(-1)  # [B, T, L]
            mask = mask.unsqueeze(1)
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        return AttentionPlan(
            positions=positions,
            kv_len=kv_len,
            mask=mask,
            slot_range=(slots[0], slots[0] + len(slots)) if contiguous else None,
            slot_index=long_tensor(slots, device),
            uniform_start=starts[0] if contiguous and len(set(starts)) == 1 else None,
            num_tokens=width,
        )

    def static_plan(self, slot_index: torch.Tensor, positions: torch.Tensor) -> AttentionPlan:
        """A one-token decode step read from device tensors (slot_index [B], positions [B, 1])
        with no host values: every key up to max_model_len is read and the mask hides those
        past each row's position, so the same plan (and a CUDA graph of it) serves every step."""
        kv_len = self.max_model_len
        mask = (torch.arange(kv_len, device=self.device) <= positions.unsqueeze(-1)).unsqueeze(1)
        return AttentionPlan(
            positions=positions,
            kv_len=kv_len,
            mask=mask,
            slot_range=None,
            slot_index=slot_index,
            uniform_start=None,
            num_tokens=1,
        )

    def write(self, layer: int, plan: AttentionPlan, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store a step's K/V, each [B, num_kv_heads, T, head_dim]."""
        if plan.uniform_start is not None and plan.slot_range is not None:
            a, b = plan.slot_range
            start = plan.uniform_start
            self.keys[layer][a:b, :, start : start + plan.num_tokens] = key
            self.values[layer][a:b, :, start : start + plan.num_tokens] = value
            return
        rows = plan.slot_index.unsqueeze(1)  # [B, 1] against positions [B, T]
        # Advanced indices on dims 0 and 2 put (B, T) first: target is [B, T, heads, head_dim].
        self.keys[layer][rows, :, plan.positions] = key.transpose(1, 2)
        self.values[layer][rows, :, plan.positions] = value.transpose(1, 2)

    def read(self, layer: int, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the step's rows, each [B, num_kv_heads, kv_len, head_dim]."""
        if plan.slot_range is not None:
            a, b = plan.slot_range  # a view: no copy for the common, contiguous case
            return (
                self.keys[layer][a:b, :, : plan.kv_len],
                self.values[layer][a:b, :, : plan.kv_len],
            )
        index = plan.slot_index
        return (
            self.keys[layer][index, :, : plan.kv_len],
            self.values[layer][index, :, : plan.kv_len],
        )
