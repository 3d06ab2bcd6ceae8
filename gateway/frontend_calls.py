"""Calls to the frontend stage, with its failures mapped for the gateway's callers.

The frontend sees the caller's own input (prompt audio, text), so its INVALID_ARGUMENT is the
caller's and passes through with the frontend's message unchanged (it already names the
caller's field); everything else is the frontend stage's failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import grpc

from services.common.errors import InvalidRequest, Overloaded, upstream_error
from services.common.pb import common_pb2, frontend_pb2, frontend_pb2_grpc
from services.common.speaker_protos import record_from_proto
from services.common.speakers import SpeakerRecord

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics


def _mapped(error: grpc.aio.AioRpcError) -> Exception:
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(error.details() or "invalid input")
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"frontend stage: {error.details()}")
    return upstream_error("frontend", error)


class FrontendClient:
    def __init__(
        self, stub: frontend_pb2_grpc.FrontendStub, timeout: float, metrics: "GatewayMetrics | None" = None
    ) -> None:
        self.stub = stub
        self.timeout = timeout
        self.metrics = metrics

    async def _call(self, method: str, request: object, timeout: float | None = None) -> Any:
        """One unary call, capped by the gateway's stage timeout, failures counted (under the
        frontend's own code, like the other stages' in cosyvoice_gateway_upstream_errors_total)
        and mapped."""
        deadline = self.timeout if timeout is None else min(timeout, self.timeout)
        try:
            return await getattr(self.stub, method)(request, timeout=deadline)
        except grpc.aio.AioRpcError as error:
            if self.metrics is not None:
                self.metrics.upstream_error("frontend", error.code())
            raise _mapped(error) from None

    async def encode_prompt(
        self, audio: bytes, field: str, pcm16_sample_rate: int = 0, request_id: str = "", timeout: float | None = None
    ) -> common_pb2.SpeakerPrompt:
        request = frontend_pb2.EncodePromptRequest(
            request_id=request_id, audio=audio, pcm16_sample_rate=pcm16_sample_rate, field=field
        )
        return (await self._call("EncodePrompt", request, timeout)).prompt

    async def segments(self, text: str, normalize: bool, timeout: float | None = None) -> list[str]:
        request = frontend_pb2.SplitTextRequest(text=text, normalize=normalize)
        return list((await self._call("SplitText", request, timeout)).segments)

    async def count_tokens(self, texts: Sequence[str], timeout: float | None = None) -> list[int]:
        """Tokens of each text on its own, with the model's tokenizer (as the LLM counts them)."""
        request = frontend_pb2.CountTokensRequest(texts=texts)
        return list((await self._call("CountTokens", request, timeout)).counts)

    async def normalize_prompt_text(self, text: str, normalize: bool, timeout: float | None = None) -> str:
        if not normalize:
            return text
        request = frontend_pb2.SplitTextRequest(text=text, normalize=True, is_prompt=True)
        return "".join((await self._call("SplitText", request, timeout)).segments)

    async def presets(self) -> list[SpeakerRecord]:
        table = await self._call("ListPresetSpeakers", frontend_pb2.ListPresetSpeakersRequest())
        return [record_from_proto(s, f"presets[{i}]", preset=True) for i, s in enumerate(table.speakers)]

    async def read_table(self, data: bytes) -> list[SpeakerRecord]:
        table = await self._call("ReadSpeakerTable", frontend_pb2.ReadSpeakerTableRequest(data=data))
        return [record_from_proto(s, f"spk2info[{i}]") for i, s in enumerate(table.speakers)]

    async def write_table(self, speakers: list[frontend_pb2.StoredSpeaker], schema: int) -> bytes:
        request = frontend_pb2.WriteSpeakerTableRequest(speakers=speakers, schema=schema)
        return (await self._call("WriteSpeakerTable", request)).data
