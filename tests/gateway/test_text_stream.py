"""Text-in streaming through the gateway: audio leaves before the text is complete."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.common.pb import tts_pb2, tts_pb2_grpc
from services.llm.engine.bistream import FeedState
from tests.stack import running_stack
from tests.waiting import eventually

# What an upstream LLM might stream. The reference's bistream takes one 5-token text group per
# piece and then waits for the next piece (after its fill token), so audio needs a few pieces.
PIECES = ["Hello there, this is", " the first piece of", " a text that an upstream", " language model streams",
          " to us a few", " words at a time,", " and we speak it", " while it is still", " being written."]
FIRST_PIECE = "".join(PIECES[:3])


@pytest.fixture
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        yield stack


def _stage_streams(stack):
    return (
        stack.llm.servicer.engine.num_active_requests,
        stack.flow.servicer.runner.num_sessions,
        stack.vocoder.servicer.runner.num_streams,
    )


def _config(**fields: object) -> tts_pb2.TextStreamRequest:
    return tts_pb2.TextStreamRequest(
        config=tts_pb2.TextStreamConfig(encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE, seed=5, **fields)
    )


FIRST_CHUNK_TOKENS = 25 + 3  # the first hop plus the flow's look-ahead (no prompt pad: 75 = 3 × 25)


def _bistream(stack):
    running = list(stack.llm.servicer.engine.engine.scheduler.running)
    return next((seq.bistream for seq in running if seq.bistream is not None), None)


def _llm_idle_after(stack, num_text_tokens: int) -> bool:
    """The LLM has taken every piece sent so far and waits for more text."""
    feed = _bistream(stack)
    return (feed is not None and feed.state is FeedState.WAITING_TEXT and not feed.pieces
            and feed.num_target_text_tokens >= num_text_tokens)


def _speech_tokens_so_far(stack) -> int:
    feed = _bistream(stack)
    return 0 if feed is None else sum(1 for t in feed.history if t < feed.speech_token_size)


@pytest.mark.parametrize("voice", ["preset", "prompt"])
async def test_first_audio_arrives_before_the_last_text_piece_is_sent(stack, tiny_model_dir, voice):
    tokenizer = CosyVoiceTokenizer.from_dir(tiny_model_dir / "CosyVoice-BlankEN")
    config = {}
    if voice == "prompt":
        config["prompt"] = tts_pb2.PromptAudio(audio=(tiny_model_dir / "prompt_sample.wav").read_bytes())
    chunks: list[tts_pb2.SynthesizeResponse] = []
    first_audio = asyncio.Event()
    async with grpc.aio.insecure_channel(stack.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(timeout=300)

        async def read_all() -> None:
            async for response in call:
                chunks.append(response)
                if response.audio:
                    first_audio.set()

        reader = asyncio.create_task(read_all())
        await call.write(_config(**config))
        sent_tokens, sent = 0, 0
        for piece in PIECES:
            await call.write(tts_pb2.TextStreamRequest(text=piece))
            sent, sent_tokens = sent + 1, sent_tokens + len(tokenizer.encode(piece))
            # Wait on events, not time: either audio is back, or the LLM has used this piece
            # and needs the next one.
            await eventually(lambda: first_audio.is_set() or _llm_idle_after(stack, sent_tokens), timeout=120,
                             what="audio, or the LLM asking for more text")
            if not first_audio.is_set() and _speech_tokens_so_far(stack) >= FIRST_CHUNK_TOKENS:
                # Enough tokens for the first chunk: its audio must come with no more text.
                await eventually(first_audio.is_set, timeout=120, what="the first chunk's audio")
            if first_audio.is_set():
                break
        assert first_audio.is_set(), "no audio before the whole text was sent"
        assert sent < len(PIECES), f"first audio came only after all {sent} pieces"
        for piece in PIECES[sent:]:
            await call.write(tts_pb2.TextStreamRequest(text=piece))
        await call.done_writing()
        await asyncio.wait_for(reader, timeout=240)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    audio = np.concatenate([np.frombuffer(c.audio, "<f4") for c in chunks])
    assert audio.size > 24000 // 2 and np.isfinite(audio).all()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def _stream_error(address: str, messages: list[tts_pb2.TextStreamRequest]) -> grpc.RpcError:
    # The sync client: when the gateway rejects the stream on its first message, the grpc.aio
    # client's next write fails locally and overwrites the gateway's status with INTERNAL
    # "Internal error from Core" (a race, seen in CI); the sync client reports the server's status.
    def call() -> grpc.RpcError:
        with grpc.insecure_channel(address) as channel:
            replies = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(iter(messages), timeout=120)
            with pytest.raises(grpc.RpcError) as info:
                for _ in replies:
                    pass
        return info.value

    return await asyncio.to_thread(call)


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([tts_pb2.TextStreamRequest(text="Hello")], grpc.StatusCode.INVALID_ARGUMENT, "must set `config`"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "must set `config`"),
        ([_config()], grpc.StatusCode.INVALID_ARGUMENT, "text: the stream ended without any text"),
        ([_config(), tts_pb2.TextStreamRequest(text="Hi."), _config()], grpc.StatusCode.INVALID_ARGUMENT,
         "only the first SynthesizeTextStream message may set `config`"),
        ([_config(speaker_id="nobody"), tts_pb2.TextStreamRequest(text="Hi.")], grpc.StatusCode.NOT_FOUND,
         "speaker_id: 'nobody' is not a registered or preset speaker"),
        ([_config(mode=tts_pb2.SYNTHESIS_MODE_INSTRUCT2), tts_pb2.TextStreamRequest(text="Hi.")],
         grpc.StatusCode.INVALID_ARGUMENT, "instruct_text: instruct2 needs an instruction"),
        ([_config(), tts_pb2.TextStreamRequest(text="x" * 5000)], grpc.StatusCode.INVALID_ARGUMENT,
         "text: a piece of 5000 characters exceeds 4000"),
    ],
)
async def test_bad_text_streams_get_a_clear_status(stack, messages, code, words):
    error = await _stream_error(stack.address, messages)
    assert error.code() == code, error.details()
    assert words in error.details()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_cancel_while_the_llm_waits_for_text_frees_every_stage(stack):
    async with grpc.aio.insecure_channel(stack.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(timeout=300)
        await call.write(_config())
        await call.write(tts_pb2.TextStreamRequest(text=FIRST_PIECE))
        await eventually(lambda: _llm_idle_after(stack, 1), timeout=120, what="the LLM waiting for more text")
        assert _stage_streams(stack) == (1, 1, 1)
        call.cancel()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
