"""One real stack for every HTTP test of the session: the four stages and the gateway
in-process (tests/stack.py, real gRPC on loopback, the tiny model), the gateway checking API
keys, and the HTTP front served by uvicorn on a free port, all on one event loop in a
background thread. A second front points at a port where nothing listens (the gateway down).

Every request to the live front must carry FULL_KEY (or SYNTH_KEY) as a Bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import uvicorn

from services.common.metrics import make_registry
from services.http.app import create_app
from services.http.config import HttpConfig
from services.http.server import bind, uvicorn_config
from tests.gateway.voice_helpers import prompt_sample, shorten_speech
from tests.stack import running_stack

FULL_KEY = "http-test-full-key"
SYNTH_KEY = "http-test-synthesize-key"
# The random-weight LLM never samples EOS: it speaks max_token_text_ratio x the text's tokens.
# 2 keeps a short sentence's audio around a second, quick to vocode on two cores.
SPEECH_RATIO = 2.0


@dataclass
class HttpStack:
    url: str  # the live front, e.g. http://127.0.0.1:PORT
    down_url: str  # a front whose gateway is not running
    gateway: str
    metrics: object  # the live front's HttpMetrics
    prompt_wav: bytes
    prompt_text: str
    model_dir: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {FULL_KEY}"}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_front(config: HttpConfig) -> AsyncIterator[tuple[str, object]]:
    """The front's app under uvicorn on a free port, in this loop."""
    app = create_app(config, make_registry())
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, config))
    server.config.timeout_graceful_shutdown = 1
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # startup is in-loop: a few iterations, no timing guess
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.metrics
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="session")
def http_stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpStack]:
    keys = tmp_path_factory.mktemp("http-keys") / "api-keys"
    keys.write_text(f"{FULL_KEY}\n{SYNTH_KEY} synthesize\n")
    started = threading.Event()
    holder: dict[str, object] = {}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        holder["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
        try:
            async with running_stack(tiny_model_dir, api_keys_file=str(keys), max_text_chars=500) as stack:
                shorten_speech(stack, SPEECH_RATIO)
                live = HttpConfig(port=0, metrics_port=-1, gateway_addr=stack.address, max_body_bytes=64 * 1024,
                                  max_upload_bytes=2 * 1024 * 1024, cors_origins="https://app.example")
                down = HttpConfig(port=0, metrics_port=-1, gateway_addr=f"127.0.0.1:{_closed_port()}",
                                  request_timeout_seconds=5)
                async with serve_front(live) as (url, metrics), serve_front(down) as (down_url, _):
                    wav, text = prompt_sample(tiny_model_dir)
                    holder["stack"] = HttpStack(url, down_url, stack.address, metrics, wav, text, tiny_model_dir)
                    started.set()
                    await stop.wait()
        except BaseException as error:  # noqa: BLE001 - reported to the test thread
            holder["error"] = error
            started.set()

    thread = threading.Thread(target=lambda: asyncio.run(run()), name="http-stack", daemon=True)
    thread.start()
    started.wait(timeout=600)
    if "error" in holder:
        raise holder["error"]  # type: ignore[misc]
    assert "stack" in holder, "the HTTP test stack did not start within 600 s"
    yield holder["stack"]  # type: ignore[misc]
    holder["stop"]()  # type: ignore[operator]
    thread.join(timeout=60)
