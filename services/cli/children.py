"""The processes `cosyvoice up` runs: each is started wrapped so it dies with `up`, its
stdout relayed (and its `listening on` line read), restarted on its own ports, and stopped
in order (the fronts drain first).

A stop signal while a service is still loading (minutes with real weights) ends the start at
once: `start` waits on the supervisor's wake-up pipe beside the child's `listening` line,
never with a sleep."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.supervisor import is_stop
from services.common import die_with_parent
from services.common.tls import ClientTls

_LISTENING = re.compile(r"listening on (\S+:\d+)(?: metrics (\S+:\d+))?")
BOUND = b"b"  # a child listens (or exited before it did): a byte in the wake-up pipe


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    address: str = ""
    metrics_address: str = ""
    args: list[str] = field(default_factory=list)  # `serve NAME` flags, to restart it the same way
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        metrics = f" (metrics {self.metrics_address})" if self.metrics_address else ""
        return f"{self.name} {self.address}{metrics}"


class StopRequested(Exception):
    """A stop signal arrived while the named service was still starting."""


def start(name: str, args: list[str], env: dict[str, str], timeout: float,
          stop_pipe: tuple[int, int] | None = None) -> Child:
    """`serve name`, once it listens (at most `timeout` s). With `stop_pipe`, the supervisor's
    wake-up pipe (read end, write end), a stop signal ends the wait at once: the half-started
    child is stopped and StopRequested raised."""
    child, bound = _launch(name, args, env, wake=stop_pipe[1] if stop_pipe else None)
    if stop_pipe is None:
        bound.wait(timeout)
    else:
        deadline = time.monotonic() + timeout
        while not bound.is_set() and (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([stop_pipe[0]], [], [], remaining)  # the relay writes BOUND
            if readable and is_stop(os.read(stop_pipe[0], 256)):
                stop_all([child], grace=5.0)
                raise StopRequested(name)
    if not bound.is_set() or not child.address:
        child.process.kill()
        code = child.process.wait()
        raise SystemExit(f"cosyvoice up: the {name} process did not start listening (exit code {code})")
    return child


def restart(child: Child) -> Child:
    """`child` started again on the same gRPC and metrics ports (the gateway and Prometheus
    keep their addresses); not waited for: the supervisor sees it exit if it cannot start."""
    _, port = child.address.rsplit(":", 1)
    pinned = ["--port", port]  # the last occurrence of a flag wins
    if child.metrics_address:
        pinned += ["--metrics-port", child.metrics_address.rsplit(":", 1)[1]]
    new, _ = _launch(child.name, [*child.args, *pinned], child.env, announce="restarted")
    new.args, new.address, new.metrics_address = child.args, child.address, child.metrics_address
    return new


def _launch(
    name: str, args: list[str], env: dict[str, str], announce: str = "", wake: int | None = None
) -> tuple[Child, threading.Event]:
    """The child started; the event is set once it listens or has exited (then also a byte
    goes to `wake`, a pipe that `start` waits on)."""
    # Wrapped so the child gets SIGTERM when `up` dies, even by SIGKILL (see die_with_parent).
    command = die_with_parent.command([sys.executable, "-m", "services.cli.main", "serve", name, *args])
    # Own process group: a terminal's Ctrl-C reaches `up` alone, which then stops the gateway
    # first (it drains) and the stages after it, instead of all four stopping at once. Not a new
    # session: with the kernel's autogroup scheduling a session is its own CPU group, and the
    # compute threads' higher nice value would no longer let other processes' relays go first.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=env, process_group=0
    )
    child = Child(name, process, args=list(args), env=env)
    bound = threading.Event()

    def set_bound() -> None:
        bound.set()
        if wake is not None:
            os.write(wake, BOUND)

    def relay() -> None:
        # Reads the child's stdout for its whole life, so the child never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            match = _LISTENING.search(line) if not bound.is_set() else None
            if match:
                child.address, child.metrics_address = match.group(1), match.group(2) or ""
                set_bound()
                if announce:
                    print(f"cosyvoice up: {name} {announce} on {child.address}", file=sys.stderr, flush=True)
            else:
                sys.stdout.write(line)
        if not bound.is_set():
            set_bound()  # exited before listening: wake the waiter

    threading.Thread(target=relay, daemon=True, name=f"{name}-stdout").start()
    return child, bound


def wait_serving(address: str, timeout: float, tls: ClientTls | None = None) -> bool:
    """Whether the service at `address` reports SERVING within `timeout`; `tls`: a TLS port."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, tls.credentials(), options=tls.options())
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
        except grpc.RpcError:
            return False
    return False


FRONT = ("http", "gateway")  # they drain their requests through the stages, so they stop first


def stop_all(children: list[Child], grace: float) -> dict[str, int]:
    """SIGTERM the HTTP front, then the gateway, one after the other (each drains its in-flight
    requests through the stages), then every stage at once: a stage's drain waits for no other
    stage, and one at a time made the worst case six graces. SIGKILL, saying so, what has not
    exited `grace` seconds after its SIGTERM. Returns the exit codes of those it stopped."""
    front = [child for name in FRONT for child in children if child.name == name]
    stages = [child for child in children if child.name not in FRONT]
    exits: dict[str, int] = {}
    for group in [*([child] for child in front), stages]:
        running = [child for child in group if child.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                exits[child.name] = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"cosyvoice up: {child.name} did not stop within {grace:g} s of SIGTERM; killing it",
                      file=sys.stderr, flush=True)
                child.process.kill()
                exits[child.name] = child.process.wait()
    return exits
