"""The playground page (`/`) in headless Chromium: it streams, plays, shows errors.

Debian's chromium driven by Playwright (no browser download is possible here). The page's
figures are read from the data-* attributes of `#stats`, and every wait is Playwright's
wait_for_function on them, never a sleep. A stand-in app with a scripted endpoint checks the
byte handling and the error display without a model; the live-stack test runs the real HTTP
front on the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Iterator

import pytest
from fastapi import Request  # a module global: the stand-in's annotations are strings

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A fake microphone (a beep) that needs no permission prompt: the recorder's path runs too.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """`app` under uvicorn in a thread, on a socket that listens before the server starts, so
    the address works at once: connections wait in the backlog until uvicorn accepts them."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


class Tab:
    """One page at 1280x720 with its uncaught errors and console errors collected."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 720})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))

    def open(self, base: str) -> None:
        self.page.goto(base + "/")
        self.page.wait_for_function("document.body.dataset.ready === 'true'", timeout=WAIT_MS)

    def stat(self, name: str) -> str:
        return self.page.get_attribute("#stats", f"data-{name}") or ""

    def synthesize(self) -> None:
        """Clicks Synthesize and waits until the request ended (done, error or stopped)."""
        before = int(self.stat("request-id"))
        self.page.click("#synthesize")
        self.page.wait_for_function(
            """(before) => { const s = document.getElementById('stats').dataset;
                 return Number(s.requestId) > before && ['done', 'error', 'stopped'].includes(s.state); }""",
            arg=before, timeout=WAIT_MS,
        )


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    tab = Tab(browser)
    yield tab
    tab.context.close()


# ---- a stand-in app: scripted answers, no model ----------------------------------------------

RAMP = b"".join(struct.pack("<h", (i * 7919) % 65536 - 32768) for i in range(24_000))  # 1 s, no symmetry


def stand_in_app():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from services.http import playground

    app = FastAPI()
    app.include_router(playground.router)

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.get("/v1/audio/voices")
    async def voices() -> dict:
        return {"voices": [{"name": "default", "preset": True}, {"name": "alice", "preset": False}]}

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        body = await request.json()
        if body["input"] == "fail":
            return JSONResponse({"error": {"code": "invalid_argument", "message": "text: the stand-in refuses"}}, 400)

        async def chunks():
            for start in range(0, len(RAMP), 4801):  # odd sizes: samples split across chunks
                yield RAMP[start:start + 4801]
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="audio/pcm")

    return app


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    with serve(stand_in_app()) as base:
        yield base


def test_player_joins_samples_split_across_chunks(tab, stand_in):
    """PcmStreamPlayer keeps an odd trailing byte for the next chunk: bytes fed in pieces of
    1, 3, 2, 5, ... come out as exactly the samples that were sent."""
    tab.open(stand_in)
    samples = tab.page.evaluate(
        """async () => {
          const { PcmStreamPlayer } = await import('./static/player.js');
          const context = new OfflineAudioContext(1, 24000, 24000);
          const player = new PcmStreamPlayer(context, 24000);
          const bytes = new Uint8Array(2000);
          for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 37 + 11) % 256;
          const sizes = [1, 3, 2, 5, 7, 1, 1, 64, 9];
          for (let at = 0, k = 0; at < bytes.length; k++) {
            const size = sizes[k % sizes.length];
            player.push(bytes.slice(at, at + size));
            at += size;
          }
          return player.int16Chunks.flatMap((chunk) => Array.from(chunk));
        }"""
    )
    expected = [struct.unpack_from("<h", bytes((i * 37 + 11) % 256 for i in (2 * n, 2 * n + 1)))[0] for n in range(1000)]
    assert samples == expected


def test_page_streams_plays_and_offers_the_exact_samples(tab, stand_in):
    tab.open(stand_in)
    tab.page.select_option("#mode", "sft")
    tab.page.select_option("#voice", "default")
    tab.synthesize()
    assert tab.stat("state") == "done", tab.page.inner_text("#error")
    assert int(tab.stat("bytes")) == len(RAMP)
    assert float(tab.stat("audio-seconds")) == pytest.approx(1.0)
    assert float(tab.stat("played-seconds")) == pytest.approx(1.0)  # every buffer's `ended` fired
    assert float(tab.stat("ttfa-ms")) > 0 and float(tab.stat("rtf")) > 0
    downloaded = tab.page.evaluate(
        """async () => { const href = document.getElementById('download').href;
             return Array.from(new Uint8Array(await (await fetch(href)).arrayBuffer())); }"""
    )
    assert bytes(downloaded[:4]) == b"RIFF" and bytes(downloaded[44:]) == RAMP
    assert tab.errors == []


def test_page_shows_the_json_error(tab, stand_in):
    tab.open(stand_in)
    tab.page.fill("#text", "fail")
    tab.page.select_option("#mode", "sft")
    tab.synthesize()
    assert tab.stat("state") == "error"
    assert tab.page.inner_text("#error") == "400 invalid_argument: text: the stand-in refuses"
    assert [e for e in tab.errors if "400" not in e] == []  # only the browser's own line for the 400
