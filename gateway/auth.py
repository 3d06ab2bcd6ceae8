"""API keys at the gateway: a server interceptor in front of every public method.

The keys file (`--api-keys-file`, COSYVOICE_GATEWAY_API_KEYS_FILE) holds one key a line, with
an optional scope; blank lines and lines starting with `#` are skipped:

    3f9c0a...e1            full access: synthesis and managing speakers
    77b2d4...90 synthesize synthesis, and listing or reading speakers; nothing that changes them

A client sends `authorization: Bearer KEY` (or `x-api-key: KEY`). No key → UNAUTHENTICATED, a
key not in the file → UNAUTHENTICATED, a key whose scope does not cover the method →
PERMISSION_DENIED. Health and reflection stay open: load balancers and grpcurl hold no key.

The interceptor runs inside the RPC metrics interceptor (ServiceHost puts it there), so every
refusal is counted under its code. Keys are compared in constant time against every key, and
never logged or echoed: messages name line numbers, not keys.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import grpc

from services.common.config import ConfigError
from services.common.pb import cosyvoice_pb2, speakers_pb2, tts_pb2

FULL = "full"
SYNTHESIZE = "synthesize"
SCOPES = (FULL, SYNTHESIZE)

MISSING_KEY = "missing API key: send `authorization: Bearer <key>`"
NOT_BEARER = "the authorization metadata must be `Bearer <key>`"
UNKNOWN_KEY = "unknown API key"

_OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
_TTS = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
_OFFICIAL = cosyvoice_pb2.DESCRIPTOR.services_by_name["CosyVoice"].full_name
_SPEAKERS = speakers_pb2.DESCRIPTOR.services_by_name["Speakers"].full_name
# What a `synthesize` key may call: every synthesis method, and reading the speakers a request
# can name. Registering, deleting, importing and exporting voices need a full-access key
# (an export hands out the voices' prompt features).
SYNTHESIZE_METHODS = frozenset({
    *(f"/{_TTS}/{m.name}" for m in tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].methods),
    *(f"/{_OFFICIAL}/{m.name}" for m in cosyvoice_pb2.DESCRIPTOR.services_by_name["CosyVoice"].methods),
    f"/{_SPEAKERS}/ListSpeakers",
    f"/{_SPEAKERS}/GetSpeaker",
})


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    scope: str
    line: int  # where it is in the file: how a log or a message refers to a key

    def allows(self, method: str) -> bool:
        return self.scope == FULL or method in SYNTHESIZE_METHODS


def parse_api_keys(text: str, label: str) -> list[ApiKey]:
    """The keys of a keys file's content; ConfigError naming `label` and the line otherwise."""
    keys: list[ApiKey] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 2:
            raise ConfigError(f"{label}: line {number} has {len(fields)} fields; expected KEY [SCOPE]")
        secret, scope = fields[0], fields[1] if len(fields) == 2 else FULL
        if scope not in SCOPES:
            raise ConfigError(f"{label}: line {number}: unknown scope {scope!r} (one of {', '.join(SCOPES)})")
        if not secret.isascii() or not secret.isprintable():
            # gRPC metadata values are printable ASCII: such a key could never be sent.
            raise ConfigError(f"{label}: line {number}: a key must be printable ASCII")
        encoded = secret.encode("ascii")
        if encoded in seen:
            raise ConfigError(f"{label}: line {number} repeats the key of line {seen[encoded]}")
        seen[encoded] = number
        keys.append(ApiKey(encoded, scope, number))
    if not keys:
        raise ConfigError(f"{label}: the file holds no key (every request would be refused)")
    return keys


def load_api_keys(path: str, label: str) -> list[ApiKey]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{label}: cannot read {path!r} ({reason})") from None
    return parse_api_keys(text, label)


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> tuple[bytes | None, str]:
    """The key a call carries, or None and why not."""
    bearer = api_key = None
    for name, value in metadata or ():
        if name == "authorization":
            bearer = value
        elif name == "x-api-key":
            api_key = value
    if bearer is not None:
        scheme, _, token = str(bearer).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, NOT_BEARER
        return token.strip().encode("ascii", errors="replace"), ""
    if api_key is not None:
        return str(api_key).strip().encode("ascii", errors="replace"), ""
    return None, MISSING_KEY


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by one that ends the call with `code`: same kind
    (unary or streaming), same (de)serializers, so the client sees a normal status."""

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return handler._replace(**{kind: refuse})
    return handler


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def find(self, presented: bytes) -> ApiKey | None:
        # Compared with every key, each in constant time: how long this takes tells nothing
        # about which key, or how much of one, matched.
        found = None
        for key in self.keys:
            if hmac.compare_digest(presented, key.secret):
                found = key
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").rpartition("/")[0] in _OPEN_SERVICES:
            return handler  # unknown methods get UNIMPLEMENTED from gRPC as before
        presented, problem = presented_key(handler_call_details.invocation_metadata)
        if presented is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, problem)
        key = self.find(presented)
        if key is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, UNKNOWN_KEY)
        if not key.allows(method):
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"this API key (scope {key.scope}) may not call {method.lstrip('/')}; "
                            "it needs a full-access key")
        return handler
