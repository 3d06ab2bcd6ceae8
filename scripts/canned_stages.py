#!/usr/bin/env python3
"""Canned llm, flow and vocoder stages in one process, for soaking the gateway alone.

    python scripts/canned_stages.py [--tokens 150] [--delay 0.4]

Prints `llm HOST:PORT`, `flow HOST:PORT` and `vocoder HOST:PORT`, then serves until killed.
The LLM streams --tokens random speech tokens, five per message, one message every --delay
seconds (so a request lasts tokens / 5 * delay seconds, as a real stream does); the flow
answers each chunk at once with 2 mel frames per token and the vocoder with 480 samples per
frame. No model, almost no CPU: a soak against these measures the gateway's own memory and
errors (docs/reliability.md, "The gateway's memory"). Pair it with a real frontend stage
(`cosyvoice serve frontend`), which the gateway needs for texts and voices.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.common.pb import flow_pb2, flow_pb2_grpc, llm_pb2, llm_pb2_grpc, vocoder_pb2, vocoder_pb2_grpc  # noqa: E402
from services.common.server import SERVER_OPTIONS  # noqa: E402
from services.common.tensors import from_proto, to_proto  # noqa: E402

SPEECH_VOCABULARY = 6561


class CannedLLM(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    def __init__(self, tokens: int, delay: float) -> None:
        self.tokens, self.delay = tokens, delay

    async def Generate(self, request, context):  # noqa: ANN001, ANN201, N802
        rng = np.random.default_rng(len(request.text))
        for _ in range(0, self.tokens, 5):
            yield llm_pb2.GenerateResponse(tokens=rng.integers(0, SPEECH_VOCABULARY, 5).tolist(), num_text_tokens=10)
            await asyncio.sleep(self.delay)
        yield llm_pb2.GenerateResponse(finish_reason=1)

    async def GetLimits(self, request, context):  # noqa: ANN001, ANN201, N802
        return llm_pb2.LLMLimits(max_model_len=4096, max_text_chars=2000, max_prompt_speech_tokens=1500,
                                 max_bistream_text_chars=4000)


class CannedFlow(flow_pb2_grpc.FlowDecoderServicer):
    async def Decode(self, requests, context):  # noqa: ANN001, ANN201, N802
        async for request in requests:
            if request.HasField("chunk"):
                mel = np.random.rand(1, 80, 2 * len(request.chunk.tokens)).astype(np.float32)
                yield flow_pb2.DecodeResponse(mel=to_proto(mel), is_final=request.chunk.finalize)
                if request.chunk.finalize:
                    return


class CannedVocoder(vocoder_pb2_grpc.VocoderServicer):
    async def Vocode(self, requests, context):  # noqa: ANN001, ANN201, N802
        async for request in requests:
            if request.HasField("chunk"):
                frames = from_proto(request.chunk.mel, "mel").shape[-1]
                audio = (np.random.rand(1, frames * 480).astype(np.float32) - 0.5) * 0.1
                yield vocoder_pb2.VocodeResponse(audio=to_proto(audio), sample_rate=24000, is_final=request.chunk.finalize)
                if request.chunk.finalize:
                    return


async def serve(tokens: int, delay: float, host: str, connection_age: bool) -> None:
    options = SERVER_OPTIONS if connection_age else [
        (name, value) for name, value in SERVER_OPTIONS if not name.startswith("grpc.max_connection_age")
    ]
    servers = []
    for name, add, servicer in (
        ("llm", llm_pb2_grpc.add_SpeechTokenGeneratorServicer_to_server, CannedLLM(tokens, delay)),
        ("flow", flow_pb2_grpc.add_FlowDecoderServicer_to_server, CannedFlow()),
        ("vocoder", vocoder_pb2_grpc.add_VocoderServicer_to_server, CannedVocoder()),
    ):
        server = grpc.aio.server(options=options)  # the real stages' options
        add(servicer, server)
        status = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(status, server)
        port = server.add_insecure_port(f"{host}:0")
        await server.start()
        await status.set("", health_pb2.HealthCheckResponse.SERVING)
        print(f"{name} {host}:{port}", flush=True)
        servers.append(server)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=150, help="speech tokens per request (default 150: 6 s of audio)")
    parser.add_argument("--delay", type=float, default=0.4, help="seconds between the LLM's messages of 5 tokens")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-connection-age", action="store_true",
                        help="keep connections open (the stages close them after about 5 minutes)")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.tokens, args.delay, args.host, not args.no_connection_age))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
