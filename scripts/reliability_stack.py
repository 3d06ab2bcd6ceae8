"""Live-stack plumbing for scripts/reliability.py: `cosyvoice up` and single `cosyvoice serve`
processes, the gateway's health as a timeline, text streams held open on purpose, bounded waits.

Every wait here has a deadline and raises `Failure` with what did not happen; every process
started here is recorded so that `stop_everything` can end it whatever went wrong.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
import statistics
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/reliability.py` from anywhere
    sys.path.insert(0, str(ROOT))

from services.common import die_with_parent  # noqa: E402
from services.common.pb import tts_pb2, tts_pb2_grpc  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IN_FLIGHT = "cosyvoice_gateway_requests_in_flight"
_UP_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend) (\S+:\d+) \(metrics (\S+:\d+)\)")
_LISTENING = re.compile(r"listening on (\S+:\d+)(?: metrics (\S+:\d+))?")
_STARTED: list[subprocess.Popen] = []
T = TypeVar("T")


class Failure(Exception):
    """Something that should have happened did not within its deadline."""


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.02) -> T:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Failure(f"{what}: not within {timeout:g} s")
        time.sleep(poll)


def ms(since: float, at: float) -> float:
    return round((at - since) * 1000.0, 1)


class Timeline:
    """Values with the monotonic time they arrived, appended by a reader thread and awaited
    by the main thread (so a time is when the client saw it, not when we looked)."""

    def __init__(self, keep: int = 2000) -> None:
        self.events: deque[tuple[float, Any]] = deque(maxlen=keep)
        self.closed = False
        self._cond = threading.Condition()

    def add(self, value: Any) -> None:
        with self._cond:
            self.events.append((time.monotonic(), value))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def first(self, match: Callable[[Any], bool], since: float, timeout: float, what: str) -> tuple[float, Any]:
        """(time, value) of the first value at or after `since` that matches."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, value in self.events:
                    if at >= since and match(value):
                        return at, value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    why = "the stream ended" if self.closed else f"not within {timeout:g} s"
                    raise Failure(f"{what}: {why}")
                self._cond.wait(remaining)

    def tail(self, count: int = 15) -> str:
        with self._cond:
            return "".join(str(value) for _, value in list(self.events)[-count:])


def _pump(stream: Any, on_line: Callable[[str], None], on_end: Callable[[], None] = lambda: None) -> None:
    """Read a child's pipe for its whole life, so the child never blocks on a full pipe."""

    def run() -> None:
        for line in stream:
            on_line(line)
        on_end()

    threading.Thread(target=run, daemon=True).start()


def _popen(argv: Sequence[str], env: dict[str, str] | None) -> subprocess.Popen:
    # die_with_parent: the child gets SIGTERM if this script dies, even by SIGKILL. Own
    # process group: a terminal's Ctrl-C reaches this script alone, which then stops its
    # children in order instead of every process draining at once.
    process = subprocess.Popen(die_with_parent.command(list(argv)), cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    _STARTED.append(process)
    return process


def stop_process(process: subprocess.Popen, grace: float) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def stop_everything() -> None:
    """Whatever is still running of what this module started (after a failure or Ctrl-C)."""
    for process in reversed(_STARTED):
        stop_process(process, grace=10.0)


def gauge(metrics_address: str, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
            match = re.search(rf"^{name} (\S+)$", reply.read().decode(), re.MULTILINE)
    except OSError as exc:
        raise Failure(f"cannot read {name} from http://{metrics_address}/metrics: {exc}") from None
    if not match:
        raise Failure(f"{name} is not exported at {metrics_address}")
    return float(match.group(1))


class Up:
    """`cosyvoice up` on free ports: its printed addresses, its stderr as a timeline."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.addresses: dict[str, str] = {}
        self.metrics: dict[str, str] = {}
        self.stderr = Timeline()
        self._ready = threading.Event()

    @classmethod
    def start(cls, model_dir: Path, flags: Sequence[str] = (), env: dict[str, str] | None = None,
              timeout: float = 300.0) -> "Up":
        process = _popen([sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(model_dir),
                          "--port", "0", "--metrics-port", "0", "--speaker-db", ":memory:", *flags], env)
        up = cls(process)
        _pump(process.stdout, up._stdout_line, up._ready.set)
        _pump(process.stderr, up.stderr.add, up.stderr.close)
        if not up._ready.wait(timeout) or len(up.addresses) < 5 or process.poll() is not None:
            stop_process(process, grace=10.0)
            raise Failure(f"cosyvoice up did not print `ready:` within {timeout:g} s; its last stderr lines:\n"
                          + up.stderr.tail())
        return up

    def _stdout_line(self, line: str) -> None:
        match = _UP_LINE.match(line)
        if match:
            self.addresses[match.group(1)] = match.group(2)
            self.metrics[match.group(1)] = match.group(3)
        elif line.startswith("ready:"):
            self._ready.set()

    @property
    def gateway(self) -> str:
        return self.addresses["gateway"]

    def gauge(self, service: str, name: str) -> float:
        return gauge(self.metrics[service], name)

    def pid_of(self, name: str) -> int:
        """The pid of `cosyvoice serve NAME` among up's children."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in path.read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:  # exited between the two reads
                continue
            at = argv.index(b"serve") if b"serve" in argv else -2  # the wrapper's argv: ... serve NAME ...
            if argv[at + 1:at + 2] == [name.encode()]:
                return int(pid)
        raise Failure(f"no `serve {name}` process under up (pid {self.process.pid})")

    def wait(self, timeout: float, what: str) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"{what}: up still running after {timeout:g} s") from None

    def stop(self, grace: float = 30.0) -> int:
        return stop_process(self.process, grace)


class Service:
    """One `cosyvoice serve NAME` process, its address once it is listening."""

    def __init__(self, name: str, process: subprocess.Popen) -> None:
        self.name, self.process = name, process
        self.address, self.metrics = "", ""
        self.stderr = Timeline(keep=200)
        self._bound = threading.Event()

    @classmethod
    def start(cls, name: str, args: Sequence[str], timeout: float = 300.0) -> "Service":
        service = cls(name, _popen([sys.executable, "-m", "services.cli.main", "serve", name, *args], None))
        _pump(service.process.stdout, service._stdout_line, service._bound.set)
        _pump(service.process.stderr, service.stderr.add, service.stderr.close)
        if not service._bound.wait(timeout) or not service.address:
            stop_process(service.process, grace=5.0)
            raise Failure(f"`serve {name}` was not listening within {timeout:g} s:\n{service.stderr.tail()}")
        return service

    def _stdout_line(self, line: str) -> None:
        match = _LISTENING.search(line)
        if match and not self.address:
            self.address, self.metrics = match.group(1), match.group(2) or ""
            self._bound.set()


def free_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts` (replicas on two loopback addresses share it)."""
    for _ in range(50):
        with socket.create_server((hosts[0], 0)) as first:
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    socket.create_server((host, port)).close()
            except OSError:
                continue
            return port
    raise Failure(f"no port free on all of {', '.join(hosts)}")


class HealthWatch:
    """One Health.Watch on a server; every status it sends, timed on arrival."""

    def __init__(self, address: str) -> None:
        self.timeline = Timeline()
        self._channel = grpc.insecure_channel(address)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for reply in health_pb2_grpc.HealthStub(self._channel).Watch(health_pb2.HealthCheckRequest(), timeout=3600):
                self.timeline.add(reply.status)
        except (grpc.RpcError, ValueError):  # the server went away, or close() closed the channel
            pass
        self.timeline.close()

    def first(self, status: int, since: float, timeout: float, what: str) -> float:
        return self.timeline.first(lambda value: value == status, since, timeout, what)[0]

    def close(self) -> None:
        self._channel.close()


def await_serving(address: str, timeout: float, what: str) -> None:
    watch = HealthWatch(address)
    try:
        watch.first(SERVING, 0.0, timeout, what)
    finally:
        watch.close()


class HeldStream:
    """A SynthesizeTextStream that sends its config and `first` text at once and `rest` only
    once released: a request that is surely in flight for as long as we want."""

    def __init__(self, address: str, first: str, rest: str, seed: int, deadline: float) -> None:
        self.first, self.rest, self.seed, self.deadline = first, rest, seed, deadline
        self.release = threading.Event()
        self.started = time.monotonic()  # reset once connected
        self.ended: float | None = None
        self.code = ""
        self.details = ""
        self.chunks = 0
        self._call: Any = None
        self._done = threading.Event()
        self._channel = grpc.insecure_channel(address)
        threading.Thread(target=self._run, daemon=True).start()

    def _requests(self) -> Any:
        yield tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig(seed=self.seed))
        yield tts_pb2.TextStreamRequest(text=self.first)
        self.release.wait(self.deadline)  # never longer than the call's own deadline
        yield tts_pb2.TextStreamRequest(text=self.rest)

    def _run(self) -> None:
        try:
            # Connected first: `started` is when the call goes out, so a rejection's latency is
            # the server's answer, not a TCP and HTTP/2 handshake.
            grpc.channel_ready_future(self._channel).result(timeout=30)
            self.started = time.monotonic()
            self._call = tts_pb2_grpc.TextToSpeechStub(self._channel).SynthesizeTextStream(
                self._requests(), timeout=self.deadline)
            for _ in self._call:
                self.chunks += 1
            self.code = "OK"
        except grpc.RpcError as error:
            self.code, self.details = error.code().name, error.details() or ""
        except grpc.FutureTimeoutError:
            self.code, self.details = "NOT_CONNECTED", "no connection to the gateway within 30 s"
        except Exception as error:  # noqa: BLE001 - e.g. close() closed the channel under it: still an outcome
            self.code, self.details = "CLIENT_ERROR", f"{type(error).__name__}: {error}"
        self.ended = time.monotonic()
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        """Let the request generator finish and cancel the call if it still runs."""
        self.release.set()
        if self._call is not None and not self._done.is_set():
            self._call.cancel()
        self._channel.close()


def synthesize(address: str, timeout: float, text: str = "Hello there.") -> tuple[str, str, float]:
    """One streaming Synthesize: (code name, details, monotonic time it ended)."""
    with grpc.insecure_channel(address) as channel:
        try:
            for _ in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
                    tts_pb2.SynthesizeRequest(text=text, stream=True), timeout=timeout):
                pass
            return "OK", "", time.monotonic()
        except grpc.RpcError as error:
            return error.code().name, error.details() or "", time.monotonic()


class Background:
    """A call run on a thread now, its result collected later with a deadline."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.result: Any = None
        self._done = threading.Event()

        def run() -> None:
            try:
                self.result = function()
            finally:  # a raising function still answers get() at once (with None)
                self._done.set()

        threading.Thread(target=run, daemon=True).start()

    def get(self, timeout: float, what: str) -> Any:
        if not self._done.wait(timeout):
            raise Failure(f"{what}: no answer within {timeout:g} s")
        return self.result


def first_success(address: str, since: float, timeout: float, call_timeout: float = 60.0) -> tuple[float, list[str]]:
    """Synthesize until one succeeds: (the time it succeeded, the codes of the failed attempts)."""
    deadline = since + timeout
    failed: list[str] = []
    while time.monotonic() < deadline:
        code, details, at = synthesize(address, min(call_timeout, max(deadline - time.monotonic(), 1.0)))
        if code == "OK":
            return at, failed
        failed.append(f"{code}: {details}")
        time.sleep(0.05)
    raise Failure(f"no synthesis succeeded within {timeout:g} s; failures: {failed[-3:]}")


def spread(values: list[float]) -> dict[str, float | None]:
    return {"median_ms": round(statistics.median(values), 1) if values else None,
            "max_ms": max(values) if values else None}


def outcomes(streams: list[HeldStream]) -> dict[str, int]:
    return dict(Counter(f"{s.code}: {s.details}" if s.details else s.code for s in streams))


def wait_streams(streams: list[HeldStream], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    for stream in streams:
        if not stream.wait(max(deadline - time.monotonic(), 0.0)):
            raise Failure(f"{what}: a stream (seed {stream.seed}) still open after {timeout:g} s")


def close_all(streams: list[HeldStream]) -> None:
    for stream in streams:
        stream.close()


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def fmt_spread(values: dict[str, float | None]) -> str:
    return f"median {fmt(values['median_ms'])}, max {fmt(values['max_ms'])}"


def checks_of(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """Every expectation in a scenario's result, nested ones included, and errors as failures."""
    found = [(what, ok) for what, ok in result.get("checks", {}).items()]
    if "error" in result:
        found.append((f"error: {result['error']}", False))
    for key, value in result.items():
        if isinstance(value, dict) and key != "checks":
            found += [(f"{key}: {what}", ok) for what, ok in checks_of(value)]
    return found
