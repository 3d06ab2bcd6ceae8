"""The playground page (`/`) in headless Chromium: it streams, plays, shows errors.

Debian's chromium driven by Playwright (no browser download is possible here). The page's
figures are read from the data-* attributes of `#stats`, and every wait is Playwright's
wait_for_function on them, never a sleep. A stand-in app with a scripted endpoint checks the
byte handling and the error display without a model; the live-stack test runs the real HTTP
front started by `cosyvoice up` on the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import soundfile
from fastapi import File, Form, Request, UploadFile  # module globals: the stand-in's annotations are strings

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A fake microphone (a beep) that needs no permission prompt: the recorder's path runs too.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]
WAIT_MS = 60_000  # a bound for a hang; a 2-core box at load 16 took 17 s for one synthesis
START_TIMEOUT_S = 300
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"

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

    def synthesize(self, until: str = "done") -> None:
        """Clicks Synthesize and waits until the request ended: "done" is every buffer played
        to its `ended`; "heard" is every byte received and the first buffer played (playback
        runs in real time, and the tiny model's noise lasts seconds). Errors end both."""
        before = int(self.stat("request-id"))
        self.page.click("#synthesize")
        self.page.wait_for_function(
            """([before, until]) => { const s = document.getElementById('stats').dataset;
                 if (Number(s.requestId) <= before) return false;
                 if (['done', 'error', 'stopped'].includes(s.state)) return true;
                 return until === 'heard' && s.state === 'playing' && Number(s.playedSeconds) > 0; }""",
            arg=[before, until], timeout=WAIT_MS,
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

    registered: dict[str, dict] = {}
    app.state.registered = registered

    @app.get("/v1/audio/voices")
    async def voices(request: Request) -> dict:
        keyed = [{"name": "keyed", "preset": True}] if request.headers.get("authorization") == "Bearer s3cret" else []
        return {"voices": [{"name": "default", "preset": True}, *keyed, *registered.values()]}

    @app.post("/v1/audio/voices", status_code=201)
    async def register(name: str = Form(), prompt_text: str = Form(), audio: UploadFile = File()) -> dict:
        info = soundfile.info(io.BytesIO(await audio.read()))  # what the real server reads it with
        registered[name] = {"name": name, "preset": False, "prompt_text": prompt_text,
                            "samplerate": info.samplerate, "seconds": info.duration, "format": info.format}
        return registered[name]

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        body = await request.json()
        app.state.last_speech = (body, request.headers.get("authorization"))
        if body["input"] == "fail":
            return JSONResponse({"error": {"code": "invalid_argument", "message": "text: the stand-in refuses"}}, 400)

        async def chunks():
            if body["input"] == "breaks":
                yield RAMP[:4800]
                raise RuntimeError("the stand-in breaks the stream")  # uvicorn drops the connection
            if body["input"] == "never ends":
                yield RAMP[:4800]
                await asyncio.Event().wait()  # until the client goes away (Starlette cancels us)
            for start in range(0, len(RAMP), 4801):  # odd sizes: samples split across chunks
                yield RAMP[start:start + 4801]
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="audio/pcm")

    return app


@pytest.fixture(scope="module")
def fake_app():
    return stand_in_app()


@pytest.fixture(scope="module")
def stand_in(fake_app) -> Iterator[str]:
    with serve(fake_app) as base:
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
    sent = bytes((i * 37 + 11) % 256 for i in range(2000))
    expected = list(struct.unpack("<1000h", sent))
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


def test_the_api_key_goes_as_a_bearer_header(tab, stand_in, fake_app):
    tab.open(stand_in)
    page = tab.page
    page.fill("#api-key", "s3cret")
    page.press("#api-key", "Tab")  # `change`: the voices are listed again, with the key
    page.select_option("#mode", "sft")
    page.wait_for_function("[...document.getElementById('voice').options].some((o) => o.value === 'keyed')",
                           timeout=WAIT_MS)
    page.select_option("#voice", "keyed")
    tab.synthesize()
    body, authorization = fake_app.state.last_speech
    assert authorization == "Bearer s3cret"
    assert body == {"model": "cosyvoice2", "input": page.input_value("#text"), "voice": "keyed",
                    "response_format": "pcm", "speed": 1, "stream_format": "audio"}
    assert "Bearer $KEY" in page.text_content("#request-line") and "s3cret" not in page.text_content("#request-line")


def test_page_shows_the_json_error(tab, stand_in):
    tab.open(stand_in)
    tab.page.fill("#text", "fail")
    tab.page.select_option("#mode", "sft")
    tab.synthesize()
    assert tab.stat("state") == "error"
    assert tab.page.inner_text("#error") == "400 invalid_argument: text: the stand-in refuses"
    assert [e for e in tab.errors if "400" not in e] == []  # only the browser's own line for the 400


def test_a_stream_that_breaks_shows_how_much_audio_came(tab, stand_in):
    tab.open(stand_in)
    tab.page.fill("#text", "breaks")
    tab.page.select_option("#mode", "sft")
    tab.synthesize()
    assert tab.stat("state") == "error"
    # 0.00 or 0.10 s: whether Chromium hands over the bytes before the reset is its business.
    assert re.fullmatch(r"the stream broke after 0\.(00|10) s of audio \(.+\); the server's log says why",
                        tab.page.inner_text("#error"))
    assert [e for e in tab.errors if "pageerror" in e] == []


def test_stop_ends_a_stream_that_is_still_coming(tab, stand_in):
    tab.open(stand_in)
    page = tab.page
    page.fill("#text", "never ends")
    page.select_option("#mode", "sft")
    page.click("#synthesize")
    page.wait_for_function("Number(document.getElementById('stats').dataset.bytes) === 4800", timeout=WAIT_MS)
    assert tab.stat("state") == "streaming"
    page.click("#stop")
    page.wait_for_function("document.getElementById('stats').dataset.state === 'stopped'", timeout=WAIT_MS)
    assert page.is_enabled("#synthesize") and not page.is_enabled("#stop")
    assert page.is_hidden("#error") and tab.errors == []


def test_microphone_recording_registers_as_a_wav(tab, stand_in, fake_app):
    """The fake microphone, captured by the AudioWorklet and encoded as WAV in the page, is a
    file soundfile reads (MediaRecorder's webm would not be), registered under its name."""
    tab.open(stand_in)
    page = tab.page
    page.click("#record")
    page.wait_for_function("Number(document.getElementById('prompt-status').dataset.recordingSeconds) >= 3.2",
                           timeout=WAIT_MS)
    page.click("#record")
    page.wait_for_function("document.getElementById('prompt-status').dataset.ready === 'true'", timeout=WAIT_MS)
    page.fill("#prompt-text", "A beep from the fake microphone.")
    page.fill("#voice-name", "mic")
    page.click("#register")
    page.wait_for_function("document.getElementById('stats').dataset.registered === 'mic'", timeout=WAIT_MS)
    voice = fake_app.state.registered["mic"]
    assert voice["format"] == "WAV" and voice["seconds"] >= 3.2 and voice["samplerate"] >= 16000
    assert voice["prompt_text"] == "A beep from the fake microphone."
    assert page.input_value("#voice") == "mic" and page.input_value("#mode") == "zero_shot"
    assert tab.errors == []


# ---- the real HTTP front over a live stack on the tiny model ---------------------------------

@contextlib.contextmanager
def cosyvoice_up(model_dir: Path, log: Path) -> Iterator[str]:
    """`cosyvoice up` as a real process on free ports (the four stages, the gateway and the HTTP
    front, six processes); yields the HTTP front's base URL once up says `ready`. Its stderr
    goes to `log`, quoted when it does not start."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(model_dir), "--port", "0",
             "--metrics-port", "0", "--speaker-db", ":memory:"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    # A bound on the start (not a timing assumption): an `up` that never says ready is killed,
    # which ends its stdout and fails the test instead of hanging it.
    watchdog = threading.Timer(START_TIMEOUT_S, process.kill)
    watchdog.start()
    try:
        http = ready = None
        assert process.stdout is not None
        for line in process.stdout:
            match = re.match(r"^http (\S+:\d+) ", line)
            if match:
                http = match.group(1)
            if line.startswith("ready"):
                ready = line
                break
        watchdog.cancel()
        assert http and ready, f"up did not start (http {http}); its stderr ends:\n{log.read_text()[-3000:]}"
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
        yield f"http://{http}"
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow  # 31-140 s on the shared 2-core box (load 3.5-16), mostly up starting and stopping six processes
def test_playground_on_a_live_stack(tab, tiny_model_dir, tmp_path):
    """Types, picks the preset voice, synthesises through /v1/audio/speech and hears it; then
    registers the tiny model's prompt recording as a voice from the file input and speaks
    with it; registering it again shows the 409; deletes it; then the inline prompt through the
    native /v1/tts/zero_shot. Saves the screenshot."""
    page = tab.page

    def heard(endpoint: str) -> None:
        tab.synthesize(until="heard")
        assert tab.stat("state") in ("playing", "done"), page.inner_text("#error")
        assert page.text_content("#request-line").startswith(f"POST /{endpoint}")
        assert int(tab.stat("bytes")) > 0 and int(tab.stat("bytes")) % 2 == 0
        assert float(tab.stat("audio-seconds")) > 0 and float(tab.stat("played-seconds")) > 0
        # The AudioContext's clock ran past what its sources reported as played.
        assert float(tab.stat("context-time")) >= float(tab.stat("played-seconds"))
        assert float(tab.stat("ttfa-ms")) > 0 and float(tab.stat("rtf")) > 0

    with cosyvoice_up(tiny_model_dir, tmp_path / "up.log") as base:
        tab.open(base)
        page.wait_for_function("document.getElementById('server').dataset.state === 'done'", timeout=WAIT_MS)

        page.fill("#text", "Hi there.")  # random weights: noise for as long as the text allows
        page.select_option("#mode", "sft")
        page.select_option("#voice", "default")
        heard("v1/audio/speech")

        page.set_input_files("#prompt-file", str(tiny_model_dir / "prompt_sample.wav"))
        page.fill("#prompt-text", (tiny_model_dir / "prompt_sample.txt").read_text().strip())
        page.fill("#voice-name", "browser-voice")
        page.click("#register")
        page.wait_for_function("document.getElementById('stats').dataset.registered === 'browser-voice'",
                               timeout=WAIT_MS)
        assert page.input_value("#mode") == "zero_shot" and page.input_value("#voice") == "browser-voice"
        heard("v1/audio/speech")

        page.click("#register")  # the same name again: the server's JSON error, shown as it is
        page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
        assert page.inner_text("#error").startswith("409 already_exists: ")
        assert "browser-voice" in page.inner_text("#error")
        assert [e for e in tab.errors if "409" not in e] == []  # only the browser's own line for the 409
        tab.errors.clear()

        page.once("dialog", lambda dialog: dialog.accept())  # "Delete the voice …?"
        page.click("#delete-voice")
        page.wait_for_function(
            "![...document.getElementById('voice').options].some((o) => o.value === 'browser-voice')",
            timeout=WAIT_MS)
        assert page.input_value("#voice") == "__prompt__"  # all that is left in zero-shot
        heard("v1/tts/zero_shot")
        assert tab.errors == []
        page.click("#request-details summary")  # the request and its curl, in the picture too
        page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size < 300_000


def test_every_control_is_labelled_and_the_page_fits_1280_wide(tab, stand_in):
    tab.open(stand_in)
    unlabelled = tab.page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
             .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                             && !(el.tagName === 'BUTTON' && el.textContent.trim()))
             .map((el) => el.id || el.outerHTML)"""
    )
    assert unlabelled == []
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scrolling
