"""Decode steps at fixed batch sizes through static buffers; on CUDA each size is a CUDA graph.

A decode step of n sequences is padded up to the smallest bucket >= n (1, 2, 4, 8, ... and
the largest bucket itself). The step's inputs (fed-back tokens, KV slots, positions) are
copied into static device buffers with one host-to-device copy, and the bucket's step is
replayed: one graph launch instead of hundreds of kernel launches, no host work per layer.
Padding rows decode token 0 into a scratch KV slot that no sequence owns, and their outputs
are dropped. Prefill, and decode batches above the largest bucket, run eagerly.

The attention of a static step reads every cache position up to max_model_len under a mask,
because the plan (and the graph) must not depend on the step's context length: the price is
reading the whole cache row per step instead of only its used part.

`capture=False` runs the very same static-buffer step eagerly: the bucket, padding and
buffer logic is then testable on CPU against the plain decode path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.kv_cache import KVCache, long_tensor

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below max_batch, then max_batch: every batch up to it has a bucket."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return tuple(sizes)


class DecodeGraphs:
    def __init__(
        self,
        model: CosyVoice2LM,
        cache: KVCache,
        max_batch: int,
        scratch_slot: int,
        capture: bool,
    ) -> None:
        if not 0 <= scratch_slot < cache.num_slots:
            raise ValueError(f"scratch slot {scratch_slot} is not a slot of the cache ({cache.num_slots})")
        if capture and cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {cache.device}")
        self.model = model
        self.cache = cache
        self.buckets = bucket_sizes(max_batch)
        self.scratch_slot = scratch_slot
        device = cache.device
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slots = torch.full((max_batch,), scratch_slot, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, 1, dtype=torch.long, device=device)
        vocab = model.speech_token_size + 3
        self.log_probs = torch.zeros(max_batch, vocab, dtype=model.llm_decoder.weight.dtype, device=device)
        self.graphs: dict[int, Any] = {}  # bucket -> torch.cuda.CUDAGraph
        if capture:
            self._capture()

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, n: int) -> int | None:
        """The smallest bucket holding n rows; None above the largest (run eagerly)."""
        for size in self.buckets:
            if size >= n:
                return size
        return None

    @torch.inference_mode()
    def _step(self, size: int) -> None:
        """One decode step of the first `size` static rows into self.log_probs[:size]."""
        plan = self.cache.static_plan(self.slots[:size], self.positions[:size])
        inputs = self.model.embed_speech_tokens(self.tokens[:size]).unsqueeze(1)
        hidden = self.model(inputs, plan, self.cache)[:, 0]
        self.log_probs[:size].copy_(self.model.log_probs(hidden))

    def _capture(self) -> None:
        # Largest first, all in one memory pool: the smaller graphs reuse its blocks. The
        # static rows hold the scratch slot while capturing, so no sequence's cache is touched.
        warm = torch.cuda.Stream(device=self.cache.device)
        warm.wait_stream(torch.cuda.current_stream(self.cache.device))
        with torch.cuda.stream(warm):
            for size in reversed(self.buckets):
                self._step(size)  # kernels chosen and workspaces allocated outside capture
        torch.cuda.current_stream(self.cache.device).wait_stream(warm)
        pool = None
        for size in reversed(self.buckets):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.cache.device)
        log.info("captured CUDA graphs for decode batch sizes %s", ",".join(map(str, self.buckets)))

    def run(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor | None:
        """Log-probs [n, V] of one decode step, or None if n is above the largest bucket.

        The result is a view of a static buffer: valid until the next run()."""
        n = len(tokens)
        size = self.bucket_for(n)
        if size is None or n == 0:
            return None
        pad = size - n
        staged = long_tensor(
            [*tokens, *[0] * pad, *slots, *[self.scratch_slot] * pad, *positions, *[0] * pad],
            self.cache.device,
        ).view(3, size)
        self.tokens[:size].copy_(staged[0])
        self.slots[:size].copy_(staged[1])
        self.positions[:size, 0].copy_(staged[2])
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._step(size)
        return self.log_probs[:n]
