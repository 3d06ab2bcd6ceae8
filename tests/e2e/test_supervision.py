"""`cosyvoice up` as an operator meets it: a stage killed with SIGKILL is restarted on its own
address while the gateway keeps running (and reports NOT_SERVING until the stage is back);
repeated failures end the stack loudly; SIGTERM drains in-flight streams, and those that outlive
the drain timeout are cut with a clear status and a non-zero exit."""

from __future__ import annotations

import queue
import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.drain import EXIT_STREAMS_CUT
from services.common.pb import tts_pb2, tts_pb2_grpc
from tests.e2e.up_process import UpProcess

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IN_FLIGHT = "cosyvoice_gateway_requests_in_flight"


def _statuses(address: str) -> "queue.Queue[int]":
    """The gateway's health, every change, read by a daemon thread from one Health.Watch."""
    changes: queue.Queue[int] = queue.Queue()

    def watch() -> None:
        with grpc.insecure_channel(address) as channel:
            try:
                for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=600):
                    changes.put(reply.status)
            except grpc.RpcError:
                pass

    threading.Thread(target=watch, daemon=True).start()
    return changes


def _synthesize(address: str) -> int:
    request = tts_pb2.SynthesizeRequest(text="Hello there.", stream=True)
    with grpc.insecure_channel(address) as channel:
        return sum(len(r.audio) for r in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=300))


def test_a_killed_stage_is_restarted_on_its_address_and_the_gateway_recovers(tiny_model_dir):
    up = UpProcess.start(tiny_model_dir)
    try:
        gateway_pid = up.pid_of("gateway")
        health = _statuses(up.gateway)
        assert health.get(timeout=60) == SERVING
        up.kill("flow")
        up.wait_for_line(r"cosyvoice up: flow exited with signal SIGKILL; restarting it on "
                         + up.addresses["flow"].replace(".", r"\.") + r" in 1 s \(restart 1 of at most 5")
        assert health.get(timeout=60) == NOT_SERVING
        up.wait_for_line(r"cosyvoice up: flow restarted on " + up.addresses["flow"].replace(".", r"\."))
        assert health.get(timeout=120) == SERVING  # the gateway reconnected by itself
        assert _synthesize(up.gateway) > 0
        assert up.pid_of("gateway") == gateway_pid
        assert up.process.poll() is None
    finally:
        assert up.stop() == 0


def test_up_gives_up_after_repeated_failures(tiny_model_dir):
    up = UpProcess.start(tiny_model_dir, "--max-restarts", "1")
    try:
        up.kill("vocoder")
        up.wait_for_line(r"vocoder restarted on ")
        up.kill("vocoder")
        up.wait_for_line(r"cosyvoice up: vocoder exited with signal SIGKILL, its 2th failure within 300 s; "
                         r"giving up and stopping the stack")
        assert up.process.wait(timeout=120) == 1
    finally:
        up.stop()


def _open_text_stream(address: str, first: str, rest: threading.Event, result: "queue.Queue[object]") -> None:
    """A SynthesizeTextStream whose remaining text is sent only once `rest` is set."""

    def requests():
        yield tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig(seed=1))
        yield tts_pb2.TextStreamRequest(text=first)
        rest.wait()
        yield tts_pb2.TextStreamRequest(text=" and this is the end of it.")

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            try:
                replies = list(tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(requests(), timeout=300))
                result.put(replies)
            except grpc.RpcError as error:
                result.put(error)

    threading.Thread(target=run, daemon=True).start()


def test_sigterm_lets_an_in_flight_stream_finish_and_refuses_new_work(tiny_model_dir):
    up = UpProcess.start(tiny_model_dir, "--drain-timeout", "120")
    rest, result = threading.Event(), queue.Queue()
    try:
        health = _statuses(up.gateway)
        assert health.get(timeout=60) == SERVING
        _open_text_stream(up.gateway, "Hello there, this is the first piece", rest, result)
        up.wait_for_gauge("gateway", IN_FLIGHT, 1)  # the stream is in flight before the signal
        up.process.send_signal(signal.SIGTERM)
        assert health.get(timeout=60) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            _synthesize(up.gateway)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == "gateway: shutting down (draining); retry on another replica"
        rest.set()
        replies = result.get(timeout=300)
        assert isinstance(replies, list) and replies and replies[-1].is_final
        assert up.process.wait(timeout=120) == 0
    finally:
        rest.set()
        up.stop()


def test_streams_outliving_the_drain_timeout_are_cut_and_up_says_so(tiny_model_dir):
    up = UpProcess.start(tiny_model_dir, "--drain-timeout", "1")
    rest, result = threading.Event(), queue.Queue()
    try:
        health = _statuses(up.gateway)
        assert health.get(timeout=60) == SERVING
        _open_text_stream(up.gateway, "Hello there, this is a piece that never ends", rest, result)
        up.wait_for_gauge("gateway", IN_FLIGHT, 1)
        up.process.send_signal(signal.SIGTERM)
        error = result.get(timeout=120)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "gateway: shutting down; the stream was cut at the 1 s drain timeout (grace_seconds)"
        assert up.process.wait(timeout=120) == EXIT_STREAMS_CUT
        assert any("gateway cut streams still in flight at the drain timeout (--drain-timeout)" in line
                   for line in up.stderr)
    finally:
        rest.set()
        up.stop()
