"""Replica failover across real processes: two flow replicas on their own addresses (127.0.0.2
and 127.0.0.3, as two hosts would be) behind one gateway process. One is killed with SIGKILL
while streams run through both: only the streams it carried fail, with UNAVAILABLE naming the
flow stage; the others finish; new requests go to the survivor at once; nothing hangs."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time

import grpc
import pytest

from scripts.reliability_stack import free_port_on, gauge
from services.cli.children import Child, start, stop_all, wait_serving
from services.common.pb import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.slow
SESSIONS = "cosyvoice_flow_sessions_active"
STREAMS = 4
PIECES = ["Hello there, this is", " the first piece of", " a text that an upstream", " language model streams",
          " to us a few", " words at a time,", " and we speak it", " while it is still", " being written."]


@contextlib.contextmanager
def replicated_processes(model_dir):
    env = dict(os.environ)
    common = ["--model-dir", str(model_dir), "--metrics-port", "0", "--num-threads", "1"]
    children: list[Child] = []
    try:
        for name in ("llm", "vocoder", "frontend"):
            children.append(start(name, ["--port", "0", *common], env, 300))
        port = free_port_on("127.0.0.2", "127.0.0.3")
        flows = [start("flow", ["--host", host, "--port", str(port), *common], env, 300)
                 for host in ("127.0.0.2", "127.0.0.3")]
        children += flows
        # Both SERVING before any traffic: the gateway is ready once one replica is, and a
        # replica still loading would leave every stream on the other one.
        assert all(wait_serving(f.address, 300) for f in flows), "a flow replica never reported SERVING"
        by_name = {c.name: c.address for c in children}
        gateway = start("gateway", [
            "--port", "0", "--metrics-port", "0", "--speaker-db", ":memory:", "--llm-addr", by_name["llm"],
            "--vocoder-addr", by_name["vocoder"], "--frontend-addr", by_name["frontend"],
            "--flow-addr", ",".join(f.address for f in flows),
        ], env, 300)
        children.insert(0, gateway)
        assert wait_serving(gateway.address, 300), "the gateway never reported SERVING"
        yield gateway, flows
    finally:
        stop_all(children, grace=30)


def _stream(address: str, release: threading.Event, heard: threading.Semaphore,
            results: "queue.Queue[object]", seed: int) -> None:
    """A text stream whose end is sent once `release` is set; `heard` is released at its first
    audio, when its flow call has answered and so is bound to its replica for good."""

    first_audio = threading.Event()

    def requests():
        yield tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig(seed=seed))
        for piece in PIECES[:-1]:  # piece by piece until audio comes back, as an upstream LLM would
            yield tts_pb2.TextStreamRequest(text=piece)
            if first_audio.wait(timeout=2):
                break
        release.wait()
        yield tts_pb2.TextStreamRequest(text=PIECES[-1])

    with grpc.insecure_channel(address) as channel:
        replies = 0
        try:
            for _ in tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(requests(), timeout=300):
                replies += 1
                if replies == 1:
                    first_audio.set()
                    heard.release()
            results.put(("ok", replies))
        except grpc.RpcError as error:
            results.put((error.code(), error.details()))
        finally:
            if replies == 0:
                heard.release()  # never leave the test waiting


def _synthesize(address: str) -> grpc.StatusCode:
    request = tts_pb2.SynthesizeRequest(text="Hello there.", stream=True)
    with grpc.insecure_channel(address) as channel:
        try:
            list(tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=120))
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_killing_one_replica_fails_only_its_streams(tiny_model_dir):
    with replicated_processes(tiny_model_dir) as (gateway, flows):
        release, heard, results = threading.Event(), threading.Semaphore(0), queue.Queue()
        threads = [threading.Thread(target=_stream, args=(gateway.address, release, heard, results, seed),
                                    daemon=True) for seed in range(STREAMS)]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert heard.acquire(timeout=120), "a stream never produced audio"
        deadline = time.monotonic() + 120  # a bounded wait for every stream to reach a flow replica
        while sum(gauge(f.metrics_address, SESSIONS) for f in flows) < STREAMS:
            assert time.monotonic() < deadline, "the streams never all reached the flow stage"
            time.sleep(0.05)
        sessions = [int(gauge(f.metrics_address, SESSIONS)) for f in flows]
        assert all(sessions), f"round robin left a replica idle: {sessions}"
        victim = max(range(2), key=lambda i: sessions[i])  # kill the busier one
        flows[victim].process.send_signal(signal.SIGKILL)
        # A new request at once, before the gateway has seen the connection reset: its flow
        # call may be sent to the dead replica, and is retried on the survivor (gateway/clients.py).
        assert _synthesize(gateway.address) == grpc.StatusCode.OK
        flows[victim].process.wait()
        release.set()
        outcomes = [results.get(timeout=300) for _ in threads]  # every stream ends: nothing hangs

        failed = [o for o in outcomes if o[0] != "ok"]
        assert len(failed) == sessions[victim], outcomes
        for code, details in failed:
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "flow stage" in details
        # New work goes to the survivor at once, no restart and no wait.
        assert [_synthesize(gateway.address) for _ in range(4)] == [grpc.StatusCode.OK] * 4
        assert gateway.process.poll() is None
        assert sys.platform == "linux"  # 127.0.0.2 and .3 are loopback addresses on Linux only
