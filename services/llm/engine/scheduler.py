"""Which sequences run in the next step, and what a sampled token does to them.

Pure Python on `Sequence` objects (no torch), so every rule here is unit-testable without a
model. Prefill has priority: waiting sequences are admitted while there is a free slot
(`max_num_seqs`) and prompt budget (`max_num_batched_tokens`); otherwise all running
sequences decode one token together.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from services.llm.engine.config import EngineConfig
from services.llm.engine.sequence import Sequence, SequenceStatus


class SchedulerError(ValueError):
    """A request the scheduler cannot take (e.g. a duplicate request id)."""


class Scheduler:
    def __init__(self, config: EngineConfig, stop_token_ids: Iterable[int]) -> None:
        self.config = config
        self.stop_token_ids = frozenset(stop_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.waiting, *self.running):
            if seq.request_id == request_id:
                return seq
        return None

    def add(self, seq: Sequence) -> None:
        if self.find(seq.request_id) is not None:
            raise SchedulerError(f"request_id {seq.request_id!r} is already in flight")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """(sequences, is_prefill); empty when nothing is in flight."""
        admitted: list[Sequence] = []
        num_batched_tokens = 0
        while self.waiting and len(self.running) + len(admitted) < self.config.max_num_seqs:
            seq = self.waiting[0]
            # The first admission always fits, so one long prompt cannot starve.
            if admitted and num_batched_tokens + seq.num_prompt_tokens > self.config.max_num_batched_tokens:
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            num_batched_tokens += seq.num_prompt_tokens
            admitted.append(seq)
        if admitted:
            self.running.extend(admitted)
            return admitted, True
        return list(self.running), False

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """Apply each sampled token; returns the sequences that finished in this step.

        A stop id ends the sequence and is not emitted (upstream: `if top_ids in
        stop_token_ids: break`); otherwise the token is emitted, and reaching max_tokens
        ends the sequence with 'length'.
        """
        if len(seqs) != len(token_ids):
            raise SchedulerError(f"{len(seqs)} sequences but {len(token_ids)} sampled tokens")
        finished = []
        for seq, token in zip(seqs, token_ids):
            if seq.is_finished:  # aborted while its step ran
                continue
            if token in self.stop_token_ids:
                seq.finish("stop")
            else:
                seq.output_tokens.append(token)
                if len(seq.output_tokens) >= seq.max_tokens:
                    seq.finish("length")
            if seq.is_finished:
                self.running.remove(seq)
                finished.append(seq)
        return finished

    def abort(self, request_id: str) -> Sequence | None:
        """Remove a waiting or running request; returns it (finished with 'abort') or None."""
        seq = self.find(request_id)
        if seq is None:
            return None
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
        seq.finish("abort")
        return seq
