"""Incremental streaming flow: every chunk equals the full re-run's, and the caches never outlive a stream."""

from __future__ import annotations

import asyncio
import gc
import weakref

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from services.common.config import ConfigError, load_config
from services.common.pb import flow_pb2, flow_pb2_grpc
from services.common.tensors import from_proto
from services.flow.api import VoicePrompt
from services.flow.chunk_decoder import ChunkJob, FlowSession, decode_chunk_batch
from services.flow.config import FlowServiceConfig
from services.flow.incremental import IncrementalFlow
from services.flow.metrics import FlowMetrics
from services.flow.model.config import REFERENCE_N_TIMESTEPS
from services.flow.runner import FlowRunner
from services.flow.speakers import SpeakerTable
from tests.flow.conftest import MEL_TOLERANCE, make_request, upstream_chunk_schedule
from tests.stack import running_stack
from tests.waiting import eventually


def _hops(n_tokens: int, n_prompt: int, hops: list[int] | None) -> list[tuple[list[int], bool]]:
    """(token positions sent, finalize) per chunk: the upstream 25→50→100 schedule, or fixed hops."""
    if hops is None:
        chunks = upstream_chunk_schedule(n_tokens, n_prompt)
        ends = [c.n_tokens for c in chunks[:-1]] + [n_tokens]  # the runner withholds the look-ahead itself
    else:
        ends, end, index = [], 0, 0
        while end + hops[index % len(hops)] < n_tokens:
            end += hops[index % len(hops)]
            ends.append(end)
            index += 1
        ends.append(n_tokens)
    pieces, start = [], 0
    for i, end in enumerate(ends):
        pieces.append((list(range(start, end)), i == len(ends) - 1))
        start = end
    return pieces


def _voice(request) -> VoicePrompt:  # noqa: ANN001
    return VoicePrompt(request.prompt_token[0].numpy(), request.prompt_feat[0].numpy(), request.embedding[0].numpy())


def _runner(flow: torch.nn.Module, incremental: bool, cache_bytes: int = 1 << 40) -> FlowRunner:
    return FlowRunner(flow, SpeakerTable({}), FlowMetrics(CollectorRegistry()), incremental=incremental,
                      incremental_cache_bytes=cache_bytes)


async def _stream(runner: FlowRunner, request, pieces) -> list[np.ndarray]:  # noqa: ANN001
    tokens = request.token[0].tolist()
    prompt = _voice(request)
    session = runner.open_session(None, prompt)
    try:
        return [(await runner.decode(session, [tokens[i] for i in sent], final)).mel for sent, final in pieces]
    finally:
        runner.close_session(session)


@pytest.mark.parametrize(
    "n_tokens,n_prompt,hops",
    [
        (190, 7, None),  # upstream schedule, prompt not a multiple of the 25-token chunk
        (160, 0, None),  # no prompt (sft voice)
        (140, 31, [13]),  # a hop that never lines up with the chunks
        (150, 50, [4, 61, 2, 30]),  # irregular hops, a prompt of exactly two chunks, chunks under the look-ahead
    ],
)
async def test_every_chunk_matches_the_full_rerun(our_flow, n_tokens, n_prompt, hops):
    request = make_request(n_tokens, n_prompt, seed=60 + n_prompt)
    pieces = _hops(n_tokens, n_prompt, hops)
    on, off = _runner(our_flow, True), _runner(our_flow, False)
    on.start()
    off.start()
    try:
        incremental = await _stream(on, request, pieces)
        full = await _stream(off, request, pieces)
    finally:
        await on.close()
        await off.close()
    assert [m.shape for m in incremental] == [m.shape for m in full]
    assert sum(m.shape[1] for m in full) == 2 * n_tokens
    worst = max(float(np.abs(a - b).max()) for a, b in zip(incremental, full) if a.size)
    assert worst <= MEL_TOLERANCE


def test_window_frames_equal_a_full_streaming_call(our_flow):
    """The model-level contract, chunk by chunk, with the prompt's frames excluded as upstream does."""
    n_tokens, n_prompt = 130, 9
    request = make_request(n_tokens, n_prompt, seed=70)
    session = FlowSession(request.prompt_token[0].long(), request.prompt_feat[0], request.embedding[0])
    state = IncrementalFlow(our_flow, session.prompt_mel, session.embedding, REFERENCE_N_TIMESTEPS)
    tokens = request.token[0].tolist()
    for chunk in upstream_chunk_schedule(n_tokens, n_prompt)[:-1]:
        job = ChunkJob(session, tuple(tokens[: chunk.n_tokens]), chunk.token_offset, False)
        expected = decode_chunk_batch(our_flow, [job])[0]
        all_tokens = torch.cat([session.prompt_tokens, torch.tensor(tokens[: chunk.n_tokens])])
        actual = state.decode(all_tokens, 2 * (n_prompt + chunk.token_offset))
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= MEL_TOLERANCE
    assert state.frame_start == state.token_start * 2 > 0  # complete chunks were cached


async def test_caches_are_freed_after_the_final_chunk_and_on_close(our_flow):
    runner = _runner(our_flow, True)
    runner.start()
    request = make_request(60, 7, seed=71)
    prompt = _voice(request)
    tokens = request.token[0].tolist()
    try:
        finished = runner.open_session(None, prompt)
        state = weakref.ref(finished.incremental)
        await runner.decode(finished, tokens[:40], finalize=False)
        assert runner.incremental_bytes() > 0
        await runner.decode(finished, tokens[40:], finalize=True)
        gc.collect()
        assert finished.incremental is None and state() is None  # freed before the stream even closes
        runner.close_session(finished)

        abandoned = runner.open_session(None, prompt)  # a cancelled stream: closed mid-utterance
        state = weakref.ref(abandoned.incremental)
        await runner.decode(abandoned, tokens[:40], finalize=False)
        runner.close_session(abandoned)
        gc.collect()
        assert state() is None and len(runner.incremental_states) == 0 and runner.incremental_bytes() == 0
    finally:
        await runner.close()


async def test_over_the_cache_budget_a_stream_falls_back_unchanged(our_flow):
    request = make_request(120, 7, seed=72)
    pieces = _hops(120, 7, None)
    tight, off = _runner(our_flow, True, cache_bytes=0), _runner(our_flow, False)
    tight.start()
    off.start()
    try:
        session = tight.open_session(None, _voice(request))
        tokens = request.token[0].tolist()
        first = await tight.decode(session, [tokens[i] for i in pieces[0][0]], False)
        assert session.incremental is None  # dropped: the budget is 0 bytes
        rest = [(await tight.decode(session, [tokens[i] for i in sent], final)).mel for sent, final in pieces[1:]]
        tight.close_session(session)
        full = await _stream(off, request, pieces)
    finally:
        await tight.close()
        await off.close()
    for a, b in zip([first.mel, *rest], full):
        assert a.shape == b.shape and (a.size == 0 or np.abs(a - b).max() <= MEL_TOLERANCE)


def test_a_non_torch_estimator_backend_turns_incremental_off(our_flow, caplog):
    our_flow.decoder.backend = lambda *args: None  # what services/flow/backends installs
    try:
        with caplog.at_level("INFO"):
            runner = _runner(our_flow, True)
    finally:
        our_flow.decoder.backend = None
    assert runner.incremental is False
    assert "incremental streaming is off: it needs the torch estimator backend" in caplog.text


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--incremental", "maybe", "cannot read 'maybe' as bool"),
        ("--incremental-cache-mib", "-1", "--incremental-cache-mib / COSYVOICE_FLOW_INCREMENTAL_CACHE_MIB must be >= 0"),
    ],
)
def test_bad_incremental_settings_name_the_setting(tiny_model_dir, flag, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(FlowServiceConfig, ["--model-dir", str(tiny_model_dir), flag, value])


def test_incremental_is_on_by_default_and_can_be_turned_off(tiny_model_dir):
    assert load_config(FlowServiceConfig, ["--model-dir", str(tiny_model_dir)], environ={}).incremental is True
    off = load_config(FlowServiceConfig, ["--model-dir", str(tiny_model_dir)], environ={"COSYVOICE_FLOW_INCREMENTAL": "off"})
    assert off.incremental is False


TOKENS = [(i * 53 + 7) % 6561 for i in range(150)]


async def test_the_service_streams_the_full_rerun_mel_and_frees_on_cancel(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        runner = stack.flow.servicer.runner
        assert runner.incremental
        pieces = _hops(len(TOKENS), 0, None)

        async def requests():
            yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart(speaker_id="default"))
            for sent, final in pieces:
                yield flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=[TOKENS[i] for i in sent], finalize=final))

        async with grpc.aio.insecure_channel(stack.flow.host.address) as channel:
            responses = [r async for r in flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests())]
        session = FlowSession(torch.zeros(0, dtype=torch.long), torch.zeros(0, 80), runner.speakers.embedding("default"))
        ends = [pieces[0][0][-1] + 1]
        for sent, _ in pieces[1:]:
            ends.append(sent[-1] + 1)
        for response, end, (_, final) in zip(responses, ends, pieces):
            expected = decode_chunk_batch(runner.flow, [ChunkJob(session, tuple(TOKENS[:end]), session.token_offset, final)])[0]
            session.token_offset = end if final else end - 3
            mel = from_proto(response.mel, "mel")
            assert mel.shape == expected.shape and np.abs(mel - expected).max() <= MEL_TOLERANCE

        queue: asyncio.Queue = asyncio.Queue()

        async def open_stream():
            yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
            while True:
                yield await queue.get()

        async with grpc.aio.insecure_channel(stack.flow.host.address) as channel:
            call = flow_pb2_grpc.FlowDecoderStub(channel).Decode(open_stream())
            await queue.put(flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=TOKENS[:60])))
            await call.read()
            assert runner.incremental_bytes() > 0
            assert _cache_gauge(runner) == runner.incremental_bytes()  # what an SRE sees beside RSS
            call.cancel()
        await eventually(lambda: runner.num_sessions == 0, what="the session being closed")
        gc.collect()
        assert len(runner.incremental_states) == 0 and runner.incremental_bytes() == 0
        assert _cache_gauge(runner) == 0


def _cache_gauge(runner: FlowRunner) -> float:
    return runner.metrics.incremental_cache.collect()[0].samples[0].value


async def test_the_chunked_final_switch_reuses_the_caches_and_only_changes_the_final_chunk(our_flow):
    """COSYVOICE_FLOW_INCREMENTAL_CHUNKED_FINAL: the final chunk keeps chunk masks instead of
    upstream's full attention, so only it differs, by an amount docs/incremental-flow.md measures."""
    request = make_request(120, 7, seed=73)
    pieces = _hops(120, 7, None)
    chunked = FlowRunner(our_flow, SpeakerTable({}), FlowMetrics(CollectorRegistry()), incremental=True,
                         chunked_final=True)
    off = _runner(our_flow, False)
    chunked.start()
    off.start()
    try:
        approximate = await _stream(chunked, request, pieces)
        full = await _stream(off, request, pieces)
    finally:
        await chunked.close()
        await off.close()
    assert [m.shape for m in approximate] == [m.shape for m in full]
    for a, b in zip(approximate[:-1], full[:-1]):
        assert np.abs(a - b).max() <= MEL_TOLERANCE
    assert np.abs(approximate[-1] - full[-1]).max() > MEL_TOLERANCE  # full attention there, not chunks
    gc.collect()
    assert len(chunked.incremental_states) == 0


def test_window_cache_keeps_complete_frames_and_counts_its_bytes():
    from services.flow.model.window_cache import WindowCache

    conv, attention = torch.nn.Identity(), torch.nn.Identity()
    cache = WindowCache()
    x = torch.arange(10.0).view(1, 1, 10)
    assert cache.conv_input(conv, x, 2)[0, 0, :2].tolist() == [0.0, 0.0]  # the causal zero padding
    k = torch.arange(10.0).view(1, 1, 10, 1)
    cache.keys_values(attention, k, k)
    cache.commit(6)  # frames 0..5 complete; 6..9 will be recomputed
    assert cache.conv_input(conv, x[:, :, 6:], 2)[0, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    keys, _ = cache.keys_values(attention, k[:, :, 6:], k[:, :, 6:])
    assert keys.flatten().tolist() == list(range(10))
    assert cache.nbytes() == (2 + 2 * 6) * 4
    cache.commit(0)  # nothing new completed: the state stays
    assert cache.nbytes() == (2 + 2 * 6) * 4
    cache.clear()
    assert cache.nbytes() == 0


async def test_a_failed_incremental_chunk_drops_the_caches_and_the_stream_goes_on_exactly(our_flow, monkeypatch):
    request = make_request(200, 7, seed=74)
    pieces = _hops(200, 7, None)  # 46, 50, 100 tokens, then the final 4
    runner, off = _runner(our_flow, True), _runner(our_flow, False)
    runner.start()
    off.start()
    tokens = request.token[0].tolist()
    try:
        session = runner.open_session(None, _voice(request))
        first = await runner.decode(session, [tokens[i] for i in pieces[0][0]], False)

        def broken(*args, **kwargs):  # noqa: ANN002, ANN003
            raise RuntimeError("out of memory")

        monkeypatch.setattr(our_flow.decoder, "forward_windows", broken)  # after the encoder committed
        with pytest.raises(RuntimeError, match="out of memory"):
            await runner.decode(session, [tokens[i] for i in pieces[1][0]], False)
        assert session.incremental is None
        # The failed chunk's tokens were taken; the stream re-sends nothing and goes on in full.
        rest = [(await runner.decode(session, [tokens[i] for i in sent], final)).mel for sent, final in pieces[2:]]
        runner.close_session(session)
        full = await _stream(off, request, pieces)
    finally:
        await runner.close()
        await off.close()
    assert np.abs(first.mel - full[0]).max() <= MEL_TOLERANCE
    # The failed chunk's frames come with the next one: what the full path gives for that call.
    end = pieces[2][0][-1] + 1
    resumed = decode_chunk_batch(our_flow, [ChunkJob(session, tuple(tokens[:end]), len(pieces[0][0]) - 3, False)])[0]
    assert rest[0].shape == resumed.shape and np.abs(rest[0] - resumed).max() <= MEL_TOLERANCE
    assert len(rest) == 2 and rest[1].shape == full[3].shape and np.abs(rest[1] - full[3]).max() <= MEL_TOLERANCE


def test_windows_of_several_streams_batch_into_one_ode_call_unchanged(our_flow):
    """decode_streams pads windows of different widths and cached keys of different lengths into
    one batch; each stream must get its own full re-run's frames, and its caches must stay right
    for the next call."""
    from services.flow.incremental import decode_streams

    setups = [(150, 0, 61), (150, 7, 62), (150, 31, 63)]
    streams = []
    for n_tokens, n_prompt, seed in setups:
        request = make_request(n_tokens, n_prompt, seed=seed)
        session = FlowSession(request.prompt_token[0].long(), request.prompt_feat[0], request.embedding[0])
        state = IncrementalFlow(our_flow, session.prompt_mel, session.embedding, REFERENCE_N_TIMESTEPS)
        streams.append((session, state, request.token[0].tolist()))
    # Different points in each stream: (token end, emitted offset) per call round.
    rounds = [[(28, 0), (40, 0), (15, 0)], [(103, 25), (41, 37), (90, 12)], [(140, 100), (120, 38), (91, 87)]]
    for calls in rounds:
        items, expected = [], []
        for (session, state, tokens), (end, offset) in zip(streams, calls):
            job = ChunkJob(session, tuple(tokens[:end]), offset, False)
            expected.append(decode_chunk_batch(our_flow, [job])[0])
            prompt = session.prompt_tokens
            items.append((state, torch.cat([prompt, torch.tensor(tokens[:end])]), 2 * (prompt.numel() + offset), False))
        for got, want in zip(decode_streams(items), expected):
            assert got.shape == want.shape and np.abs(got - want).max() <= MEL_TOLERANCE
    assert len({state.frame_start for _, state, _ in streams}) > 1  # the batch mixed cached lengths


def test_a_model_whose_chunks_do_not_line_up_keeps_the_full_rerun(our_flow, monkeypatch, caplog):
    """Estimator chunks must end on encoder chunk ends, or a cached frame's encoder output
    could still change."""
    import dataclasses

    config = our_flow.encoder.config
    monkeypatch.setattr(our_flow.encoder, "config", dataclasses.replace(config, static_chunk_size=0))
    with caplog.at_level("INFO"):
        runner = _runner(our_flow, True)
    assert runner.incremental is False
    assert "estimator's 50-frame chunks do not end on the encoder's 0-token chunks" in caplog.text
