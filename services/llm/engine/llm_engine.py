"""The LLM engine: requests in, one speech token per request per step out.

`step()` is the whole loop (nano-vllm's split): the scheduler picks a prefill or decode
batch, the model runner computes and samples, the scheduler applies stop/length rules. All
concurrent requests share each decode step. The engine is not thread-safe: one thread (the
gRPC service's engine loop, or `generate()` in-process) drives it.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence as Sequence_

import torch

from services.common.modeldir.layout import ModelDir
from services.llm.engine.bistream import BistreamFeed, FeedState
from services.llm.engine.config import EngineConfig
from services.llm.engine.model_runner import ModelRunner
from services.llm.engine.scheduler import Scheduler
from services.llm.engine.sequence import FinishReason, Sequence
from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.loader import load_llm
from services.llm.model.prompt import LLMPrompt, PromptError, check_prompt_ids, length_limits
from services.llm.model.sampling import SamplingParams


class RequestError(ValueError):
    """A request the engine cannot serve; the message names the field."""


@dataclass(frozen=True)
class StepOutput:
    request_id: str
    token: int | None  # None when the step ended the request without a token
    finished: bool
    finish_reason: FinishReason | None  # 'stop' | 'length' | 'abort' once finished


class LLMEngine:
    def __init__(
        self,
        model: CosyVoice2LM,
        config: EngineConfig | None = None,
        default_params: SamplingParams | None = None,
    ) -> None:
        self.model = model
        self.config = config or EngineConfig()
        self.default_params = default_params or SamplingParams()
        self.runner = ModelRunner(model, self.config)
        self.scheduler = Scheduler(self.config, model.stop_token_ids)
        self._pending: list[StepOutput] = []  # abort notices for the next step()
        self._outboxes: dict[str, deque[StepOutput]] = {}  # requests driven by generate()

    @classmethod
    def from_model_dir(
        cls,
        model_dir: ModelDir,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: EngineConfig | None = None,
    ) -> "LLMEngine":
        """Load llm.pt strictly; default sampling comes from the yaml's `llm.sampling`."""
        model = load_llm(model_dir, device=device, dtype=dtype)
        params = SamplingParams.from_config(model_dir.stage_config("llm"))
        return cls(model, config, params)

    def add_request(
        self, request_id: str, prompt: LLMPrompt, params: SamplingParams | None = None
    ) -> None:
        """Queue a request; raises PromptError/RequestError/SchedulerError (all ValueError)."""
        if not isinstance(request_id, str) or not request_id:
            raise RequestError("request_id must be a non-empty string")
        params = params or self.default_params
        self.model.check_prompt(prompt)
        max_len = self.config.max_model_len
        if prompt.num_positions > max_len:
            raise PromptError(
                f"text: the prompt needs {prompt.num_positions} positions (text, prompt text and prompt "
                f"speech tokens), more than max_model_len {max_len}"
            )
        min_tokens, max_tokens = length_limits(
            prompt.num_target_text_tokens, params.min_token_text_ratio, params.max_token_text_ratio
        )
        if max_tokens < 1:
            raise RequestError(
                f"max_token_text_ratio {params.max_token_text_ratio} allows no token for "
                f"{prompt.num_target_text_tokens} text tokens"
            )
        # The last sampled token is never fed back, so it needs no cache position.
        max_tokens = min(max_tokens, max_len - prompt.num_positions + 1)
        seq = Sequence(request_id, prompt, params, min_tokens=min_tokens, max_tokens=max_tokens)
        self.scheduler.add(seq)

    def step(self) -> list[StepOutput]:
        outputs, self._pending = self._pending, []
        fresh: list[StepOutput] = []
        seqs, is_prefill = self.scheduler.schedule()
        if seqs:
            tokens = self.runner.run(seqs, is_prefill)
            finished = self.scheduler.postprocess(seqs, tokens)
            for seq, token in zip(seqs, tokens):
                emitted = None if token in self.scheduler.stop_token_ids else token
                if emitted is None and not seq.is_finished:
                    continue  # a bistream FILL: nothing to tell the caller
                fresh.append(StepOutput(seq.request_id, emitted, seq.is_finished, seq.finish_reason))
            for seq in finished:
                self.runner.release(seq)
        for output in fresh:
            if output.request_id in self._outboxes:
                self._outboxes[output.request_id].append(output)
        return outputs + fresh

    def add_bistream_request(
        self,
        request_id: str,
        prompt_text_ids: Sequence_[int] = (),
        prompt_speech_tokens: Sequence_[int] = (),
        params: SamplingParams | None = None,
    ) -> None:
        """Queue a text-in streaming request; its text comes with push_text()/end_text().

        It takes a KV slot once it has input to prefill and keeps it while it waits for text.
        """
        if not isinstance(request_id, str) or not request_id:
            raise RequestError("request_id must be a non-empty string")
        params = params or self.default_params
        check_prompt_ids(
            LLMPrompt(tuple(prompt_text_ids), tuple(prompt_speech_tokens), 0),
            self.model.text_vocab_size, self.model.speech_token_size,
        )
        feed = BistreamFeed.start(
            prompt_text_ids, prompt_speech_tokens, self.model.speech_token_size,
            params.max_token_text_ratio, self.config.bistream_refeed_quirk,
        )
        # No min length (EOS is masked until the text ends); the cap is set at the end of text.
        seq = Sequence(request_id, None, params, min_tokens=0, max_tokens=self.config.max_model_len, bistream=feed)
        self.scheduler.add(seq)

    def push_text(self, request_id: str, text_ids: Sequence_[int]) -> None:
        """Give a bistream request its next text piece (tokenized on its own)."""
        bad = [t for t in text_ids if not 0 <= t < self.model.text_vocab_size]
        if bad:
            raise RequestError(f"text: ids {bad[:5]} are outside the text vocabulary [0, {self.model.text_vocab_size})")
        self._finish_if_done(self.scheduler.push_text(request_id, text_ids))

    def end_text(self, request_id: str) -> None:
        """No more text for a bistream request: it decodes until EOS or its length cap."""
        seq = self.scheduler.find(request_id)
        if seq is not None and seq.bistream is not None and seq.bistream.num_target_text_tokens == 0:
            raise RequestError("text: the stream ended without any text to speak")
        self._finish_if_done(self.scheduler.end_text(request_id))

    def _finish_if_done(self, seq: Sequence | None) -> None:
        """A text event ended a request (its input would not fit): free it, tell the caller."""
        if seq is None:
            return
        self.runner.release(seq)
        notice = StepOutput(seq.request_id, None, True, seq.finish_reason)
        self._pending.append(notice)
        if seq.request_id in self._outboxes:
            self._outboxes[seq.request_id].append(notice)

    def has_work(self) -> bool:
        """Whether step() would do anything; False while every request waits for text."""
        return self.scheduler.has_work() or bool(self._pending)

    def abort_request(self, request_id: str) -> bool:
        """Drop a request and free its slot; its 'abort' output comes with the next step()."""
        seq = self.scheduler.abort(request_id)
        if seq is None:
            return False
        self.runner.release(seq)
        notice = StepOutput(request_id, None, True, "abort")
        self._pending.append(notice)
        if request_id in self._outboxes:  # a generate() of this request sees it at once
            self._outboxes[request_id].append(notice)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV-cache slots held by running sequences. A slot reserves max_model_len
        positions up front, so slots, not positions, are what runs out."""
        return 1.0 - self.runner.num_free_slots / self.config.max_num_seqs

    def generate(
        self,
        prompt: LLMPrompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Iterator[int]:
        """Speech tokens of one request as they are sampled (in-process pipeline).

        Several generate() iterators on one engine interleave and share decode steps;
        closing an iterator early aborts its request.
        """
        request_id = request_id or f"generate-{uuid.uuid4().hex}"
        self.add_request(request_id, prompt, params)
        yield from self._tokens_of(request_id, self.step)

    def generate_bistream(
        self,
        pieces: Iterable[Sequence_[int]],
        prompt_text_ids: Sequence_[int] = (),
        prompt_speech_tokens: Sequence_[int] = (),
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Iterator[int]:
        """Speech tokens of one bistream request (in-process). Like the reference's text
        generator, the next piece is pulled only when the LLM waits for text."""
        request_id = request_id or f"bistream-{uuid.uuid4().hex}"
        self.add_bistream_request(request_id, prompt_text_ids, prompt_speech_tokens, params)
        seq = self.scheduler.find(request_id)
        assert seq is not None and seq.bistream is not None
        feed = seq.bistream
        source = iter(pieces)

        def advance() -> None:
            if feed.state is FeedState.WAITING_TEXT and not feed.text_ended:
                piece = next(source, None)
                if piece is None:
                    self.end_text(request_id)
                else:
                    self.push_text(request_id, piece)
            elif self.has_work():
                self.step()
            else:  # e.g. every slot held by other bistreams waiting for text
                raise RequestError(f"request {request_id!r} cannot progress: no free KV slot")

        yield from self._tokens_of(request_id, advance)

    def _tokens_of(self, request_id: str, advance: Callable[[], None]) -> Iterator[int]:
        """The tokens of an added request as repeated `advance()` calls (engine steps, text
        pushes) produce them. Closing the iterator early aborts the request."""
        outbox: deque[StepOutput] = deque()
        self._outboxes[request_id] = outbox
        try:
            while True:
                while not outbox:
                    advance()
                output = outbox.popleft()
                if output.token is not None:
                    yield output.token
                if output.finished:
                    return
        finally:
            self._outboxes.pop(request_id, None)
            if self.scheduler.find(request_id) is not None:
                self.abort_request(request_id)
