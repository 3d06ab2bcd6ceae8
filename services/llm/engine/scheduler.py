"""Which sequences run in the next step, and what a sampled token does to them.

Pure Python on `Sequence` objects (no torch), so every rule here is unit-testable without a
model. Prefill has priority: bistream extends and waiting sequences are admitted while there
is a free slot (`max_num_seqs`) and prompt budget (`max_num_batched_tokens`); otherwise all
running sequences that have a token to feed decode one token together. A bistream sequence
waiting for text keeps its slot but is in no batch until `push_text`/`end_text` give it input.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable
from typing import Sequence as Sequence_

from services.llm.engine.bistream import FeedState, TokenOutcome
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
        """(sequences, is_prefill); empty when nothing can run now.

        A prefill step takes running bistream sequences with new input (extends, which
        continue at their cache position) and then newly admitted sequences; a bistream
        sequence that is still waiting for its first text is skipped, not queued behind.
        Otherwise every running sequence that has a token to feed decodes; those waiting
        for text hold their slot and are left out.
        """
        batch: list[Sequence] = []
        tokens = width = max_start = 0

        def fits(seq: Sequence) -> bool:
            # The first row always fits, so one long prompt cannot starve. Rows are padded
            # to the widest, and padding must stay inside every row's cache.
            n = seq.num_prefill_tokens
            if not batch:
                return True
            return (tokens + n <= self.config.max_num_batched_tokens
                    and max(max_start, seq.prefill_start) + max(width, n) <= self.config.max_model_len)

        def take(seq: Sequence) -> None:
            nonlocal tokens, width, max_start
            tokens += seq.num_prefill_tokens
            width = max(width, seq.num_prefill_tokens)
            max_start = max(max_start, seq.prefill_start)
            batch.append(seq)

        for seq in self.running:
            if _extending(seq) and fits(seq):
                take(seq)
        admitted: list[Sequence] = []
        for seq in list(self.waiting):
            if len(self.running) + len(admitted) >= self.config.max_num_seqs:
                break
            if seq.bistream is not None and not _extending(seq):
                continue  # waiting for text: no slot yet, and no reason to block the queue
            if not fits(seq):
                break
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            take(seq)
            admitted.append(seq)
        if batch:
            self.running.extend(admitted)
            return batch, True
        return [seq for seq in self.running if _decoding(seq)], False

    def has_work(self) -> bool:
        """Whether schedule() would return anything: False while every running sequence
        waits for text and nothing admissible waits, so the engine loop can sleep."""
        if any(_extending(seq) or _decoding(seq) for seq in self.running):
            return True
        if len(self.running) >= self.config.max_num_seqs:
            return False
        return any(seq.bistream is None or _extending(seq) for seq in self.waiting)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """Apply each sampled token; returns the sequences that finished in this step.

        A stop id ends the sequence and is not emitted (upstream: `if top_ids in
        stop_token_ids: break`); otherwise the token is emitted, and reaching max_tokens
        ends the sequence with 'length'. Bistream sequences follow their feed's rules.
        """
        if len(seqs) != len(token_ids):
            raise SchedulerError(f"{len(seqs)} sequences but {len(token_ids)} sampled tokens")
        finished = []
        for seq, token in zip(seqs, token_ids):
            if seq.is_finished:  # aborted while its step ran
                continue
            if seq.bistream is not None:
                self._bistream_token(seq, token)
            elif token in self.stop_token_ids:
                seq.finish("stop")
            else:
                seq.output_tokens.append(token)
                if len(seq.output_tokens) >= seq.max_tokens:
                    seq.finish("length")
            if seq.is_finished:
                self.running.remove(seq)
                finished.append(seq)
        return finished

    # --- bistream ----------------------------------------------------------------------------
    def _bistream_token(self, seq: Sequence, token: int) -> None:
        feed = seq.bistream
        assert feed is not None
        outcome = feed.on_step(token)
        if outcome is TokenOutcome.STOP:
            seq.finish("stop")
            return
        if outcome is TokenOutcome.EMIT:
            seq.output_tokens.append(token)
        self._check_bistream_limits(seq)

    def _check_bistream_limits(self, seq: Sequence) -> None:
        """'length' once the cap (known at the end of text) is reached, or when the next
        input would not fit in the sequence's cache row."""
        feed = seq.bistream
        assert feed is not None
        cap = feed.max_tokens
        if cap is not None and len(seq.output_tokens) >= cap:
            seq.finish("length")
        elif feed.num_cached + feed.positions_needed > self.config.max_model_len:
            seq.finish("length")

    def _bistream(self, request_id: str) -> Sequence:
        seq = self.find(request_id)
        if seq is None or seq.bistream is None:
            raise SchedulerError(f"request_id {request_id!r} is not an unfinished bistream request")
        return seq

    def push_text(self, request_id: str, text_ids: Sequence_[int]) -> Sequence | None:
        """Queue a text piece; returns the sequence if that finished it ('length')."""
        seq = self._bistream(request_id)
        seq.bistream.push_piece(text_ids)  # type: ignore[union-attr]
        return self._settle(seq)

    def end_text(self, request_id: str) -> Sequence | None:
        """The text is complete; returns the sequence if that finished it ('length')."""
        seq = self._bistream(request_id)
        seq.bistream.end_text()  # type: ignore[union-attr]
        return self._settle(seq)

    def _settle(self, seq: Sequence) -> Sequence | None:
        self._check_bistream_limits(seq)
        if not seq.is_finished:
            return None
        if seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
        return seq

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


def _extending(seq: Sequence) -> bool:
    return seq.bistream is not None and seq.bistream.state is FeedState.EXTEND


def _decoding(seq: Sequence) -> bool:
    return seq.bistream is None or seq.bistream.state is FeedState.DECODE
