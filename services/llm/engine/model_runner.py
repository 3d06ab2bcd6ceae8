"""Everything in the engine that touches torch: the model, its KV cache, slots, sampling."""

from __future__ import annotations

import heapq

import torch

from services.llm.engine.config import EngineConfig
from services.llm.engine.decode_graphs import DecodeGraphs
from services.llm.engine.sequence import Sequence
from services.llm.model.batched_sampling import SampleRow, sample_batch
from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.kv_cache import long_tensor
from services.llm.model.sampling import new_generator


class SlotError(RuntimeError):
    """More running sequences than KV-cache slots: a scheduler/runner mismatch."""


class ModelRunner:
    def __init__(self, model: CosyVoice2LM, config: EngineConfig) -> None:
        self.model = model.eval()
        self.config = config
        static = config.decode_graphs != "off"
        # Static decode pads batches with rows that write somewhere: one extra slot, never handed out.
        self.cache = model.new_kv_cache(config.max_num_seqs + int(static), config.max_model_len)
        self._free_slots = list(range(config.max_num_seqs))  # a heap: lowest slot first
        self.graphs: DecodeGraphs | None = None
        if static:
            self.graphs = DecodeGraphs(
                model, self.cache, config.graph_batch_limit, scratch_slot=config.max_num_seqs,
                capture=config.decode_graphs == "cuda",
            )

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def _allocate(self, seq: Sequence) -> None:
        if seq.slot is not None:
            return
        if not self._free_slots:
            raise SlotError(f"no free KV-cache slot for request {seq.request_id!r}")
        # Lowest free slot first keeps running slots dense, so most steps read the cache as
        # one contiguous view instead of gathering rows.
        seq.slot = heapq.heappop(self._free_slots)

    def release(self, seq: Sequence) -> None:
        """Give the sequence's slot back; its stale K/V need no clearing (always masked)."""
        if seq.slot is not None:
            heapq.heappush(self._free_slots, seq.slot)
            seq.slot = None

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        """One forward step for `seqs` (prefill of new prompts and bistream extends, or one
        decode token each),
        then one sampled token per sequence, in the order given."""
        if not seqs:
            return []
        if is_prefill:
            for seq in seqs:
                self._allocate(seq)
                if seq.generator is None:
                    seq.generator = new_generator(seq.params.seed)
        # Run rows in slot order: consecutive slots make the cache read a view.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)
        ordered = [seqs[i] for i in order]
        sampled = self._sample(ordered, self.forward(ordered, is_prefill))
        tokens = [0] * len(seqs)
        for row, index in enumerate(order):
            tokens[index] = sampled[row]
        return tokens

    def forward(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        """Log-probs [len(seqs), V] of the next token, on the model's device and dtype."""
        if not is_prefill and self.graphs is not None:
            log_probs = self.graphs.run(
                [seq.last_token for seq in seqs], [seq.slot for seq in seqs],  # type: ignore[misc]
                [seq.decode_position for seq in seqs],
            )
            if log_probs is not None:
                return log_probs
        hidden = self._prefill(seqs) if is_prefill else self._decode(seqs)
        return self.model.log_probs(hidden)

    def _prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        # New prompts start at 0; bistream extends continue after what their slot holds.
        embeds = [
            self.model.embed_segments(seq.bistream.pending) if seq.bistream is not None
            else self.model.embed_prompt(seq.prompt)  # type: ignore[arg-type]
            for seq in seqs
        ]
        lengths = [e.shape[0] for e in embeds]
        if len(embeds) == 1:
            inputs = embeds[0].unsqueeze(0)
        else:
            inputs = torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)
        plan = self.cache.plan([seq.slot for seq in seqs], [seq.prefill_start for seq in seqs], lengths)
        hidden = self.model(inputs, plan, self.cache)
        last = long_tensor(lengths, hidden.device) - 1
        return hidden[torch.arange(len(seqs), device=hidden.device), last]

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        tokens = long_tensor([seq.last_token for seq in seqs], self.model.speech_embedding.weight.device)
        inputs = self.model.embed_speech_tokens(tokens).unsqueeze(1)
        # The fed-back token sits right after everything already in the cache.
        plan = self.cache.plan([seq.slot for seq in seqs], [seq.decode_position for seq in seqs], [1] * len(seqs))
        return self.model(inputs, plan, self.cache)[:, 0]

    def _sample(self, seqs: list[Sequence], log_probs: torch.Tensor) -> list[int]:
        """One token per row, the whole batch at once: one transfer of the log-probs to the
        host, and no per-sequence device sync."""
        tokens: list[int | None] = [None] * len(seqs)
        rows: list[SampleRow] = []
        sampled: list[int] = []
        for i, seq in enumerate(seqs):
            feed = seq.bistream
            if feed is not None:
                # A forced FILL draws nothing from the generator (the reference skips sampling);
                # the RAS window is the reference's out_tokens, FILLs included.
                tokens[i] = feed.forced_token()
                if tokens[i] is None:
                    rows.append(SampleRow(seq.params, seq.generator, feed.history, feed.masked_token()))
                    sampled.append(i)
                continue
            # Upstream masks EOS (only that id) while i < min_len, i = tokens emitted so far.
            masked = self.model.eos_token if len(seq.output_tokens) < seq.min_tokens else None
            rows.append(SampleRow(seq.params, seq.generator, seq.output_tokens, masked))
            sampled.append(i)
        if rows:
            if len(rows) < len(seqs):
                log_probs = log_probs[long_tensor(sampled, log_probs.device)]
            for i, token in zip(sampled, sample_batch(log_probs, rows)):
                tokens[i] = token
        return tokens  # type: ignore[return-value]
