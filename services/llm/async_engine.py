"""asyncio front of the LLM engine: one engine thread, many concurrent request streams.

The engine is single-threaded by design, so every call into it (add, abort, step) runs on
one dedicated worker thread: no lock, and the event loop never blocks on model compute.
A single loop task steps the engine while any request is unfinished and routes each
step's tokens to the per-request queues; with nothing to do it sleeps on an Event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import AsyncIterator, Callable, TypeVar

from services.common.compute_thread import compute_executor
from services.common.errors import InvalidRequest, Overloaded, ServingError
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.llm.api import BistreamStart, GenerationRequest, TokenEvent
from services.llm.engine.llm_engine import LLMEngine, StepOutput
from services.llm.engine.scheduler import SchedulerError
from services.llm.metrics import LLMMetrics
from services.llm.model.prompt import LLMPrompt, SynthesisMode, build_prompt
from services.llm.model.sampling import SamplingParams

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncLLMEngine:
    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: CosyVoiceTokenizer,
        metrics: LLMMetrics,
        max_waiting_requests: int,
        nice_increment: int = 0,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.max_waiting_requests = max_waiting_requests
        self._executor = compute_executor("llm-engine", nice_increment)
        self._queues: dict[str, asyncio.Queue[StepOutput]] = {}
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    @property
    def num_active_requests(self) -> int:
        """Requests with engine state (waiting or running); 0 once every stream has ended."""
        return len(self._queues)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="llm-engine-loop")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def build_prompt(self, request: GenerationRequest) -> LLMPrompt:
        text_ids = self.tokenizer.encode(request.text)
        if not text_ids:
            raise InvalidRequest("text: tokenizes to nothing")
        prompt_ids = self.tokenizer.encode(request.prompt_text) if request.prompt_text else []
        if request.prompt_speech_tokens:
            mode, kwargs = SynthesisMode.ZERO_SHOT, {"prompt_text_ids": prompt_ids}
        elif prompt_ids:
            mode, kwargs = SynthesisMode.INSTRUCT2, {"instruct_text_ids": prompt_ids}
        else:
            mode, kwargs = SynthesisMode.SFT, {}
        try:
            return build_prompt(mode, text_ids, prompt_speech_tokens=tuple(request.prompt_speech_tokens), **kwargs)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def sampling_params(self, overrides: dict) -> SamplingParams:
        try:
            return dataclasses.replace(self.engine.default_params, **overrides)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"sampling: {exc}") from None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Token events of one request; leaving the iterator early aborts it in the engine."""
        prompt = self.build_prompt(request)
        params = self.sampling_params(request.sampling)
        if self.engine.scheduler.num_waiting >= self.max_waiting_requests:
            raise Overloaded(f"{self.engine.scheduler.num_waiting} requests already wait for the LLM (max_waiting_requests)")
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue[StepOutput | ServingError] = asyncio.Queue()
        self._queues[request_id] = queue
        self.metrics.streams.set(len(self._queues))
        finished = False
        try:
            try:
                await self._call(self.engine.add_request, request_id, prompt, params)
            except ValueError as exc:  # prompt, sampling or length validation
                raise InvalidRequest(str(exc)) from None
            self.metrics.prompt_tokens.inc(prompt.num_positions)
            self._work.set()
            arrived, first = time.perf_counter(), True
            while not finished:
                outputs = [await queue.get()]
                while not queue.empty() and not isinstance(outputs[-1], ServingError) and not outputs[-1].finished:
                    outputs.append(queue.get_nowait())
                if isinstance(outputs[-1], ServingError):
                    finished = True  # the engine already dropped the request
                    raise outputs[-1]
                tokens = tuple(o.token for o in outputs if o.token is not None)
                if first and tokens:
                    self.metrics.time_to_first_token.observe(time.perf_counter() - arrived)
                    first = False
                last = outputs[-1]
                finished = last.finished
                yield TokenEvent(tokens, finished, last.finish_reason, prompt.num_target_text_tokens)
        finally:
            self._queues.pop(request_id, None)
            self.metrics.streams.set(len(self._queues))
            if not finished:  # cancelled or abandoned: free the KV slot now
                await asyncio.shield(self._abort(request_id))

    async def generate_bistream(self, start: BistreamStart, pieces: AsyncIterator[str]) -> AsyncIterator[TokenEvent]:
        """Token events of a text-in streaming request whose text arrives as `pieces`
        (each tokenized on its own; empty strings are skipped; the iterator's end is the end
        of text). An error raised by `pieces` ends the stream with that error. Leaving the
        iterator early aborts the request and frees its slot at once."""
        prompt_ids = self.tokenizer.encode(start.prompt_text) if start.prompt_text else []
        params = self.sampling_params(start.sampling)
        if self.engine.scheduler.num_waiting >= self.max_waiting_requests:
            raise Overloaded(f"{self.engine.scheduler.num_waiting} requests already wait for the LLM (max_waiting_requests)")
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue[StepOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        self.metrics.streams.set(len(self._queues))
        finished = False
        feeder: asyncio.Task | None = None
        try:
            try:
                await self._call(
                    self.engine.add_bistream_request, request_id, prompt_ids, start.prompt_speech_tokens, params
                )
            except ValueError as exc:  # prompt ids or sampling validation
                raise InvalidRequest(str(exc)) from None
            self.metrics.prompt_tokens.inc(len(prompt_ids) + len(start.prompt_speech_tokens))
            feeder = asyncio.create_task(self._feed_text(request_id, pieces, queue), name=f"llm-text-{request_id}")
            while not finished:
                outputs = [await queue.get()]
                while not queue.empty() and isinstance(outputs[-1], StepOutput) and not outputs[-1].finished:
                    outputs.append(queue.get_nowait())
                if isinstance(outputs[-1], BaseException):
                    raise outputs[-1]  # the request still holds engine state: aborted below
                tokens = tuple(o.token for o in outputs if isinstance(o, StepOutput) and o.token is not None)
                last = outputs[-1]
                finished = last.finished
                if tokens or finished:
                    yield TokenEvent(tokens, finished, last.finish_reason, 0)
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            self._queues.pop(request_id, None)
            self.metrics.streams.set(len(self._queues))
            if not finished:
                await asyncio.shield(self._abort(request_id))

    async def _feed_text(self, request_id: str, pieces: AsyncIterator[str], queue: asyncio.Queue) -> None:
        """Hand the pieces to the engine as they arrive; failures go to the response stream."""
        try:
            has_text = False
            async for piece in pieces:
                if not piece:
                    continue
                ids = self.tokenizer.encode(piece)
                has_text = has_text or bool(ids)
                await self._call(self.engine.push_text, request_id, ids)
                self._work.set()
            if not has_text:
                raise InvalidRequest("text: the stream ended without any text to speak")
            await self._call(self.engine.end_text, request_id)
            self._work.set()
        except SchedulerError:
            return  # the request already finished (e.g. its length cap): later text is moot
        except ValueError as exc:
            queue.put_nowait(InvalidRequest(str(exc)))
        except Exception as exc:  # noqa: BLE001 - e.g. the caller's stream failed: end the response
            queue.put_nowait(exc)

    async def _abort(self, request_id: str) -> None:
        """Drop a request from the engine; the gauges follow at once, not at the next step
        (with nothing else running there may be none for a while)."""
        self._record_load(*await self._call(self._abort_and_count, request_id))
        self._work.set()  # the freed slot may admit a waiting request

    def _abort_and_count(self, request_id: str) -> tuple[int, int, float]:
        self.engine.abort_request(request_id)
        return self._load()

    def _load(self) -> tuple[int, int, float]:
        """(running, waiting, KV-cache usage); read on the engine thread, which owns them."""
        scheduler = self.engine.scheduler
        return scheduler.num_running, scheduler.num_waiting, self.engine.kv_cache_usage

    def _record_load(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        self.metrics.requests_running.set(running)
        self.metrics.requests_waiting.set(waiting)
        self.metrics.kv_cache_usage.set(kv_cache_usage)

    async def _fail_all(self) -> None:
        """Drop every request from the engine and end its stream with an internal error."""
        for request_id, queue in list(self._queues.items()):
            await self._call(self.engine.abort_request, request_id)
            queue.put_nowait(ServingError("the LLM engine failed while generating this request"))

    def _step(self) -> tuple[list[StepOutput], bool, tuple[int, int, float]]:
        outputs = self.engine.step()
        # has_work, not has_unfinished: bistream requests waiting for text must not spin the
        # loop; their next text (or a freed slot) sets the work event again.
        return outputs, self.engine.has_work(), self._load()

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            busy = True
            while busy:
                started = time.perf_counter()
                try:
                    outputs, busy, load = await self._call(self._step)
                except Exception:  # noqa: BLE001 - a failed step must not strand every stream
                    logger.exception("LLM engine step failed; failing the requests it held")
                    await self._fail_all()
                    break
                self.metrics.step_duration.observe(time.perf_counter() - started)
                self._record_load(*load)
                tokens = sum(1 for o in outputs if o.token is not None)
                if tokens:
                    self.metrics.step_batch_size.observe(tokens)
                    self.metrics.generation_tokens.inc(tokens)
                for output in outputs:
                    if output.finished:
                        self.metrics.requests_finished.labels(output.finish_reason or "unknown").inc()
                    queue = self._queues.get(output.request_id)
                    if queue is not None:
                        queue.put_nowait(output)
