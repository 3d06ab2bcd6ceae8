"""A bounded fuzz of the public API (issue 9a): hypothesis over every field of every public
request message, and raw bytes as requests, against one in-process stack.

Every reply must be OK or one of the codes that describe the request (never UNKNOWN, INTERNAL,
UNAVAILABLE, and never a hang: each call has a deadline and DEADLINE_EXCEEDED fails), with a
message; nothing may log an ERROR; and the stack must still serve a good request at the end.

Bounded for CI: derandomized (the same examples every run, no example database), a fixed number
of examples per API, texts of a few characters, and the gateway's max_text_chars lowered so a
generated text that parses can never ask the random-weight model for long audio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc, speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc
from tests.gateway.voice_helpers import tone, wav_bytes
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.slow

MAX_TEXT_CHARS = 12  # the gateway's limit here: longer texts are INVALID_ARGUMENT at once
CALL_DEADLINE_SECONDS = 60.0  # far beyond any call here (the slowest takes about 2 s); reaching it is a hang
# What a caller may be told about its own request. Anything else (UNKNOWN, INTERNAL,
# UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) is a bug in the server or a hang.
REQUEST_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
})
FUZZ = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UNARY_STREAM = {"/cosyvoice.v1.TextToSpeech/Synthesize", "/cosyvoice.CosyVoice/Inference"}
STREAM_STREAM = {"/cosyvoice.v1.TextToSpeech/SynthesizeTextStream"}
UNARY_UNARY = {f"/cosyvoice.v1.Speakers/{m}" for m in (
    "RegisterSpeaker", "ListSpeakers", "GetSpeaker", "DeleteSpeaker", "ImportSpeakers", "ExportSpeakers")}


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path) -> Iterator[tuple[Stack, asyncio.AbstractEventLoop]]:
    """The stack on its own event loop in a background thread, so hypothesis drives it with
    the plain synchronous client."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[Stack] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with running_stack(tiny_model_dir, max_text_chars=MAX_TEXT_CHARS) as running:
                started.set_result(running)
                await stop.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="fuzz-stack")
    thread.start()
    try:
        yield started.result(timeout=300), loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=120)
        loop.close()


@pytest.fixture(scope="module")
def channel(stack: tuple[Stack, asyncio.AbstractEventLoop]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack[0].address) as channel:
        yield channel


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    """Run `call`; its code, which must be OK or a request code with a message."""
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in REQUEST_CODES, f"{error.code().name}: {error.details()}"
        assert error.details(), f"{error.code().name} without a message"
        # --hypothesis-show-statistics: how often each code came back, and for which field
        event(f"{error.code().name} {error.details().split(':', 1)[0][:40]}")
        return error.code()
    event("OK")
    return grpc.StatusCode.OK


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing the fuzz sends may make any process log an ERROR or a traceback."""
    caplog.set_level(logging.INFO)
    yield
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == []


# Fields: short texts (with the awkward characters), names that exist and that do not, enum
# values in and out of range (proto3 enums are open), the optional fields set and unset.
texts = st.one_of(
    st.sampled_from(["", " ", "Hi.", "Hello!", "你好。", "a\x00b", "<|endofprompt|>", "1+1=2", "\u202e", "x" * 13]),
    st.text(max_size=8),
)
# Mostly empty: a set instruction or transcript that the mode does not take ends a request early.
optional_texts = st.one_of(st.just(""), st.just(""), texts)
speaker_ids = st.one_of(st.sampled_from(["", "default", "nobody", "fuzzed"]), st.text(max_size=6))


@st.composite
def enums(draw: Callable[..., Any], valid: range) -> int:
    """Mostly a value the enum has (an invalid one ends the request at its first check, before
    the paths behind it), else any: out of range, negative, the int32 ends."""
    if draw(st.sampled_from(["valid", "valid", "valid", "any"])) == "valid":
        return draw(st.sampled_from(valid))
    return draw(st.one_of(st.integers(-2, 8), st.sampled_from([-(2**31), 2**31 - 1])))


modes, encodings, schemas = enums(range(5)), enums(range(4)), enums(range(3))
seeds = st.one_of(st.none(), st.integers(0, 2**64 - 1))
speeds = st.one_of(st.none(), st.floats(width=32), st.sampled_from([0.5, 1.0, 2.0]))
maybe_bools = st.one_of(st.none(), st.booleans())


WAV = wav_bytes(tone(3.5, 16000), 16000)  # a recording the frontend accepts
audio = st.one_of(st.just(b""), st.binary(max_size=48), st.just(WAV), st.just(b"RIFF\x00\x00\x00\x00WAVEfmt "))


def _voice(draw: Callable[..., Any], message: Any) -> None:
    kind = draw(st.sampled_from(["none", "speaker_id", "prompt"]))
    if kind == "speaker_id":
        message.speaker_id = draw(speaker_ids)
    elif kind == "prompt":
        message.prompt.SetInParent()  # set even when both of its fields stay empty
        message.prompt.audio = draw(audio)
        message.prompt.text = draw(optional_texts)


@st.composite
def synthesize_requests(draw: Callable[..., Any]) -> tts_pb2.SynthesizeRequest:
    request = tts_pb2.SynthesizeRequest(
        text=draw(texts), encoding=draw(encodings), stream=draw(st.booleans()), mode=draw(modes),
        instruct_text=draw(optional_texts),
    )
    _voice(draw, request)
    for name, strategy in (("seed", seeds), ("speed", speeds), ("text_frontend", maybe_bools)):
        value = draw(strategy)
        if value is not None:
            setattr(request, name, value)
    return request


@st.composite
def text_stream_requests(draw: Callable[..., Any]) -> list[tts_pb2.TextStreamRequest]:
    def config() -> tts_pb2.TextStreamRequest:
        message = tts_pb2.TextStreamConfig(
            mode=draw(modes), instruct_text=draw(optional_texts), encoding=draw(encodings)
        )
        _voice(draw, message)
        seed = draw(seeds)
        if seed is not None:
            message.seed = seed
        return tts_pb2.TextStreamRequest(config=message)

    def any_message() -> tts_pb2.TextStreamRequest:
        kind = draw(st.sampled_from(["text", "text", "config", "empty"]))
        if kind == "config":
            return config()
        return tts_pb2.TextStreamRequest(text=draw(texts)) if kind == "text" else tts_pb2.TextStreamRequest()

    first = config() if draw(st.sampled_from([True, True, True, False])) else any_message()
    return [first, *(any_message() for _ in range(draw(st.integers(0, 3))))]


@st.composite
def official_requests(draw: Callable[..., Any]) -> cosyvoice_pb2.Request:
    pcm = st.one_of(st.binary(max_size=64), st.just(bytes(3200)), st.just(bytes(96000)))  # raw int16 at 16 kHz, or not
    kind = draw(st.sampled_from(["none", "sft", "zero_shot", "cross_lingual", "instruct"]))
    if kind == "sft":
        return cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id=draw(speaker_ids), tts_text=draw(texts)))
    if kind == "zero_shot":
        return cosyvoice_pb2.Request(zero_shot_request=cosyvoice_pb2.zeroshotRequest(
            tts_text=draw(texts), prompt_text=draw(texts), prompt_audio=draw(pcm)))
    if kind == "cross_lingual":
        return cosyvoice_pb2.Request(cross_lingual_request=cosyvoice_pb2.crosslingualRequest(
            tts_text=draw(texts), prompt_audio=draw(pcm)))
    if kind == "instruct":
        return cosyvoice_pb2.Request(instruct_request=cosyvoice_pb2.instructRequest(
            tts_text=draw(texts), spk_id=draw(speaker_ids), instruct_text=draw(texts)))
    return cosyvoice_pb2.Request()


@st.composite
def speakers_calls(draw: Callable[..., Any]) -> tuple[str, Any]:
    method = draw(st.sampled_from(sorted(m.rsplit("/", 1)[1] for m in UNARY_UNARY)))
    names = st.one_of(speaker_ids, st.sampled_from(["a" * 200, "../etc", "with space", "fuzz-1", "fuzz-2"]))
    if method == "RegisterSpeaker":
        request = speakers_pb2.RegisterSpeakerRequest(name=draw(names), overwrite=draw(st.booleans()))
        request.prompt.SetInParent()
        request.prompt.audio = draw(audio)
        request.prompt.text = draw(st.one_of(texts, st.just("Hello, this is a short sample of my voice.")))
        text_frontend = draw(maybe_bools)
        if text_frontend is not None:
            request.text_frontend = text_frontend
    elif method == "ListSpeakers":
        request = speakers_pb2.ListSpeakersRequest()
    elif method == "GetSpeaker":
        request = speakers_pb2.GetSpeakerRequest(name=draw(names), include_features=draw(st.booleans()))
    elif method == "DeleteSpeaker":
        request = speakers_pb2.DeleteSpeakerRequest(name=draw(names))
    elif method == "ImportSpeakers":
        request = speakers_pb2.ImportSpeakersRequest(
            spk2info=draw(st.one_of(st.binary(max_size=64), st.just(b"\x80\x02}q\x00."))),  # random, an empty pickle
            overwrite=draw(st.booleans()), skip_existing=draw(st.booleans()),
        )
    else:
        request = speakers_pb2.ExportSpeakersRequest(
            schema=draw(schemas), names=draw(st.lists(names, max_size=3))
        )
    return method, request


@settings(FUZZ, max_examples=80)
@given(request=synthesize_requests())
# Requests that succeed, so the fuzz's neighbourhood always includes the paths past validation.
@example(request=tts_pb2.SynthesizeRequest(text="Hi.", stream=True))
@example(request=tts_pb2.SynthesizeRequest(text="Hi.", prompt=tts_pb2.PromptAudio(audio=WAV), speed=1.5))
def test_synthesize(channel: grpc.Channel, quiet_log: None, request: tts_pb2.SynthesizeRequest) -> None:
    replies: list[tts_pb2.SynthesizeResponse] = []
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    code = outcome(lambda: replies.extend(stub.Synthesize(request, timeout=CALL_DEADLINE_SECONDS)))
    if code == grpc.StatusCode.OK:
        assert replies and replies[-1].is_final


@settings(FUZZ, max_examples=120)
@given(messages=text_stream_requests())
@example(messages=[tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig()), tts_pb2.TextStreamRequest(text="Hi")])
def test_synthesize_text_stream(
    channel: grpc.Channel, quiet_log: None, messages: list[tts_pb2.TextStreamRequest]
) -> None:
    replies: list[tts_pb2.SynthesizeResponse] = []
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    code = outcome(lambda: replies.extend(stub.SynthesizeTextStream(iter(messages), timeout=CALL_DEADLINE_SECONDS)))
    if code == grpc.StatusCode.OK:
        assert replies and replies[-1].is_final


@settings(FUZZ, max_examples=80)
@given(request=official_requests())
@example(request=cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="default", tts_text="Hi.")))
def test_official_inference(channel: grpc.Channel, quiet_log: None, request: cosyvoice_pb2.Request) -> None:
    stub = cosyvoice_pb2_grpc.CosyVoiceStub(channel)
    outcome(lambda: list(stub.Inference(request, timeout=CALL_DEADLINE_SECONDS)))


@settings(FUZZ, max_examples=150)
@given(call=speakers_calls())
@example(call=("RegisterSpeaker", speakers_pb2.RegisterSpeakerRequest(
    name="fuzz-1", prompt=tts_pb2.PromptAudio(audio=WAV, text="A tone."), overwrite=True)))
@example(call=("ExportSpeakers", speakers_pb2.ExportSpeakersRequest()))
@example(call=("ExportSpeakers", speakers_pb2.ExportSpeakersRequest(names=["fuzz-1", "fuzz-1"])))  # was INTERNAL
def test_speakers(channel: grpc.Channel, quiet_log: None, call: tuple[str, Any]) -> None:
    method, request = call
    stub = speakers_pb2_grpc.SpeakersStub(channel)
    outcome(lambda: getattr(stub, method)(request, timeout=CALL_DEADLINE_SECONDS))


@settings(FUZZ, max_examples=250)
@given(path=st.sampled_from(sorted(UNARY_STREAM | STREAM_STREAM | UNARY_UNARY)),
       payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=3))
def test_raw_bytes(channel: grpc.Channel, quiet_log: None, path: str, payloads: list[bytes]) -> None:
    """Bytes as they come: most do not parse (INVALID_ARGUMENT naming the type), some parse
    into a message of their own, which then gets whatever that message gets."""
    if path in STREAM_STREAM:
        outcome(lambda: list(channel.stream_stream(path)(iter(payloads), timeout=CALL_DEADLINE_SECONDS)))
    elif path in UNARY_STREAM:
        outcome(lambda: list(channel.unary_stream(path)(payloads[0], timeout=CALL_DEADLINE_SECONDS)))
    else:
        outcome(lambda: channel.unary_unary(path)(payloads[0], timeout=CALL_DEADLINE_SECONDS))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/cosyvoice.v1.TextToSpeech/Synthesize", "cosyvoice.v1.SynthesizeRequest"),
        ("/cosyvoice.CosyVoice/Inference", "cosyvoice.Request"),
        ("/cosyvoice.v1.Speakers/RegisterSpeaker", "cosyvoice.v1.RegisterSpeakerRequest"),
    ],
)
def test_bytes_that_do_not_parse_are_named(channel: grpc.Channel, path: str, message: str, quiet_log: None) -> None:
    garbage = b"\xff\xff\xff\xff\x0f"
    call = channel.unary_unary(path) if path in UNARY_UNARY else channel.unary_stream(path)
    with pytest.raises(grpc.RpcError) as info:
        reply = call(garbage, timeout=CALL_DEADLINE_SECONDS)
        list(reply) if path in UNARY_STREAM else None
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"request: the bytes are not a valid {message}"


def test_a_bad_message_mid_text_stream_is_named(channel: grpc.Channel, quiet_log: None) -> None:
    config = tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig()).SerializeToString()
    text = tts_pb2.TextStreamRequest(text="Hi").SerializeToString()
    call = channel.stream_stream("/cosyvoice.v1.TextToSpeech/SynthesizeTextStream")
    with pytest.raises(grpc.RpcError) as info:
        list(call(iter([config, text, b"\xff\xff\xff"]), timeout=CALL_DEADLINE_SECONDS))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "request: the bytes of message 3 of the stream are not a valid cosyvoice.v1.TextStreamRequest"
    )


def test_the_stack_still_serves_after_the_fuzz(
    stack: tuple[Stack, asyncio.AbstractEventLoop], channel: grpc.Channel, quiet_log: None
) -> None:
    running, loop = stack
    assert running.gateway is not None
    idle = asyncio.run_coroutine_threadsafe(running.gateway.calls.wait_idle(60.0), loop)
    assert idle.result(timeout=90), "calls of the fuzz still in flight"
    request = tts_pb2.SynthesizeRequest(text="Hello.", encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE, seed=1)
    replies = list(tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=120))
    assert replies[-1].is_final and sum(len(r.audio) for r in replies) > 0
