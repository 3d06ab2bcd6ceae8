"""The Vocoder service over real gRPC, in-process on port 0."""

import asyncio

import grpc
import numpy as np
import pytest
import torch

from services.common.modeldir.layout import ModelDir
from services.common.pb import vocoder_pb2, vocoder_pb2_grpc
from services.common.tensors import from_proto, to_proto
from services.vocoder.model.loader import load_hift
from services.vocoder.model.streaming import VocoderStream
from tests.stack import running_stack
from tests.waiting import eventually

FRAMES = [50, 100, 30]


def _mels(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((80, n)).astype(np.float32) - 4 for n in FRAMES]


@pytest.fixture
async def vocoder(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        yield stack.vocoder


async def _vocode(address, mels, seed):
    async def requests():
        yield vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(seed=seed))
        for i, mel in enumerate(mels):
            yield vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=to_proto(mel), finalize=i == len(mels) - 1))

    async with grpc.aio.insecure_channel(address) as channel:
        return [r async for r in vocoder_pb2_grpc.VocoderStub(channel).Vocode(requests())]


async def test_chunks_equal_the_in_process_stream_with_its_caches(vocoder, tiny_model_dir):
    responses = await _vocode(vocoder.host.address, _mels(), seed=5)
    assert [r.sample_rate for r in responses] == [24000] * 3
    assert [r.is_final for r in responses] == [False, False, True]
    hift = load_hift(ModelDir.open(tiny_model_dir))
    stream = VocoderStream(hift, torch.Generator().manual_seed(5))
    for i, (mel, response) in enumerate(zip(_mels(), responses)):
        expected = stream.push(torch.from_numpy(mel), final=i == 2).numpy()
        np.testing.assert_allclose(from_proto(response.audio, "audio"), expected, atol=1e-6)
    # 3840 samples are held back from each non-final chunk and released with the next.
    sizes = [from_proto(r.audio, "a").size for r in responses]
    assert sizes == [50 * 480 - 3840, 100 * 480, 30 * 480 + 3840]


async def test_concurrent_streams_batch_and_keep_their_own_noise(vocoder):
    alone = [await _vocode(vocoder.host.address, _mels(), seed=s) for s in (1, 2)]
    together = await asyncio.gather(*(_vocode(vocoder.host.address, _mels(), seed=s) for s in (1, 2, 1, 2)))
    for responses, reference in zip(together, alone * 2):
        for a, b in zip(responses, reference):
            np.testing.assert_allclose(from_proto(a.audio, "a"), from_proto(b.audio, "b"), atol=1e-4)
    first = np.concatenate([from_proto(r.audio, "a") for r in alone[0]])
    second = np.concatenate([from_proto(r.audio, "a") for r in alone[1]])
    assert not np.allclose(first, second)  # the seed matters


@pytest.mark.parametrize(
    ("mel", "words"),
    [
        (np.zeros((79, 10), np.float32), "chunk.mel: shape"),
        (np.full((80, 10), np.nan, np.float32), "finite"),
        (np.zeros((80, 3), np.float32), "at least 8"),
        (np.zeros((80, 15001), np.float32), "exceed the limit"),
    ],
)
async def test_bad_mel_is_invalid_argument(vocoder, mel, words):
    async def requests():
        yield vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart())
        yield vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=to_proto(mel)))

    async with grpc.aio.insecure_channel(vocoder.host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in vocoder_pb2_grpc.VocoderStub(channel).Vocode(requests()):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.details()
    await eventually(lambda: vocoder.servicer.runner.num_streams == 0, what="the stream being closed")
