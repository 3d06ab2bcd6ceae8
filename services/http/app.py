"""The HTTP front's app factory: routes, the one error shape, CORS, body limits, metrics.

`/` and `/static` are left to the playground (services/http/playground.py), which is
included here. Routes stay thin: gRPC calls live in gateway_client.py, encoding in
audio_format.py, the error map in errors.py.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from services.common.metrics import make_registry, package_version
from services.http import playground, routes_health, routes_native, routes_speech, routes_voices, routes_ws
from services.http.config import HttpConfig
from services.http.errors import install_error_handlers
from services.http.gateway_client import GatewayClient
from services.http.metrics import HttpMetrics
from services.http.middleware import BodyLimit, RequestMetrics

DESCRIPTION = """CosyVoice 2 over HTTP: an OpenAI-compatible `/v1/audio/speech`, voices, the native
modes, the seed's `/inference_*` paths and a WebSocket text stream (`/v1/audio/speech/stream`,
not shown here: see docs/http.md). Every call goes to the gateway's gRPC API; send the gateway's
API key as `Authorization: Bearer KEY` when it checks keys. Errors are
`{"error": {"code": ..., "message": ...}}`."""


class _StartTime:
    """Stamps each request's arrival, for the first-audio latency (synthesis.py)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["cosyvoice.start"] = time.monotonic()
        await self.app(scope, receive, send)


def create_app(config: HttpConfig, registry: CollectorRegistry | None = None) -> FastAPI:
    tls = config.gateway_tls()  # the files are read now, once

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # grpc.aio binds a channel to the running loop: opened here, not at import.
        app.state.gateway = GatewayClient(config.gateway_addr, tls, config.request_timeout_seconds)
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = FastAPI(title="CosyVoice HTTP API", version=package_version(), description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs", openapi_url="/openapi.json", redoc_url=None)
    app.state.config = config
    app.state.metrics = HttpMetrics(registry if registry is not None else make_registry())
    install_error_handlers(app)
    for module in (routes_health, routes_speech, routes_voices, routes_native, routes_ws):
        app.include_router(module.router)
    app.include_router(playground.router)  # `/` and `/static/*`
    # Added innermost first: CORS answers preflights outside everything; every request,
    # refused ones included, passes the metrics.
    app.add_middleware(BodyLimit, body_limit=config.max_body_bytes, upload_limit=config.max_upload_bytes)
    app.add_middleware(_StartTime)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    if config.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in config.allowed_origins)
    return app
