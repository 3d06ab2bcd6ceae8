"""Channels and stubs of the three stages, one set per gateway process."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common.pb import flow_pb2_grpc, frontend_pb2_grpc, llm_pb2_grpc, vocoder_pb2_grpc
from services.common.server import CHANNEL_OPTIONS


@dataclass
class StageClients:
    llm: llm_pb2_grpc.SpeechTokenGeneratorStub
    flow: flow_pb2_grpc.FlowDecoderStub
    vocoder: vocoder_pb2_grpc.VocoderStub
    frontend: frontend_pb2_grpc.FrontendStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, llm_addr: str, flow_addr: str, vocoder_addr: str, frontend_addr: str) -> "StageClients":
        # One HTTP/2 channel per stage multiplexes every request's stream; a stage that is down
        # fails calls at once with UNAVAILABLE (no wait_for_ready), which the gateway reports.
        llm = grpc.aio.insecure_channel(llm_addr, options=CHANNEL_OPTIONS)
        flow = grpc.aio.insecure_channel(flow_addr, options=CHANNEL_OPTIONS)
        vocoder = grpc.aio.insecure_channel(vocoder_addr, options=CHANNEL_OPTIONS)
        frontend = grpc.aio.insecure_channel(frontend_addr, options=CHANNEL_OPTIONS)
        return cls(
            llm=llm_pb2_grpc.SpeechTokenGeneratorStub(llm),
            flow=flow_pb2_grpc.FlowDecoderStub(flow),
            vocoder=vocoder_pb2_grpc.VocoderStub(vocoder),
            frontend=frontend_pb2_grpc.FrontendStub(frontend),
            channels=[llm, flow, vocoder, frontend],
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
