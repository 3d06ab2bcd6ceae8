"""`cosyvoice up`: the whole stack on this machine, as six separate processes (the four stages,
the gateway, and the HTTP front, docs/http.md, which calls the gateway like any client).

The four stages bind free gRPC ports; the gateway is started with their addresses. `up`
prints one line per service, gateway first: `NAME HOST:PORT (metrics HOST:PORT)`, then
`ready: ...` once the gateway is SERVING. SIGINT/SIGTERM stop the gateway first (it drains),
then the stages.

Prometheus /metrics ports (--metrics-port N, default 9400; 0: free ports, -1: none):
  gateway N (9400)   llm N+1 (9401)   flow N+2 (9402)   vocoder N+3 (9403)   frontend N+4 (9404)
  http N+5 (9405)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import up_security
from services.cli.supervisor import EXIT_SIGNAL, RestartPolicy, Supervisor
from services.common import die_with_parent
from services.common.drain import EXIT_STREAMS_CUT

from services.common.config import DEFAULT_METRICS_PORTS
from services.http.config import DEFAULT_HTTP_PORT
from services.common.tls import ClientTls

_LISTENING = re.compile(r"listening on (\S+:\d+)(?: metrics (\S+:\d+))?")
STAGES = ("llm", "flow", "vocoder", "frontend")
DEFAULT_METRICS_PORT = DEFAULT_METRICS_PORTS["gateway"]
# Each service's metrics port relative to the gateway's, as in the fixed defaults.
METRICS_PORT_OFFSETS = {name: port - DEFAULT_METRICS_PORT for name, port in DEFAULT_METRICS_PORTS.items()}
DEFAULT_TINY_DIR = Path(os.environ.get("COSYVOICE_CACHE", Path.home() / ".cache" / "cosyvoice")) / "tiny-model"


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


def _start(name: str, args: list[str], env: dict[str, str], timeout: float) -> Child:
    child, bound = _launch(name, args, env)
    if not bound.wait(timeout) or not child.address:
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


def _launch(name: str, args: list[str], env: dict[str, str], announce: str = "") -> tuple[Child, threading.Event]:
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

    def relay() -> None:
        # Reads the child's stdout for its whole life, so the child never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            match = _LISTENING.search(line) if not bound.is_set() else None
            if match:
                child.address, child.metrics_address = match.group(1), match.group(2) or ""
                bound.set()
                if announce:
                    print(f"cosyvoice up: {name} {announce} on {child.address}", file=sys.stderr, flush=True)
            else:
                sys.stdout.write(line)
        bound.set()  # exited: wake the waiter

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


def _flags_of(**values: str) -> list[str]:
    return [arg for name, value in values.items() if value for arg in (f"--{name.replace('_', '-')}", value)]


def _stage_device(device: str, index: int) -> str:
    if device != "cuda":
        return device
    import torch  # only to count GPUs; the stages import it anyway

    count = torch.cuda.device_count()
    if count == 0:
        raise SystemExit("cosyvoice up: --device cuda but no CUDA device is visible")
    return f"cuda:{index % count}"  # one GPU per stage when there are three or more


def metrics_ports(base: int) -> dict[str, int]:
    """Each service's --metrics-port for `up --metrics-port base` (0: free ports, -1: none)."""
    if base <= 0:
        return {name: base for name in METRICS_PORT_OFFSETS}
    return {name: base + offset for name, offset in METRICS_PORT_OFFSETS.items()}


def _taken(host: str, port: int) -> str | None:
    """Why `port` cannot be listened on, or None when it is free."""
    import socket

    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)


def check_metrics_ports(host: str, metrics_host: str, port: int, base: int) -> None:
    """The fixed metrics ports, before anything starts: the gateway binds its own last, after
    every stage has loaded, so a taken one would otherwise fail minutes in."""
    last = base + max(METRICS_PORT_OFFSETS.values())
    if base < -1 or last > 65535:
        raise SystemExit(f"cosyvoice up: --metrics-port {base} must be -1, 0 or N with N..N+5 in 1..65535")
    ports = metrics_ports(base)
    if base <= 0:
        return
    if port in ports.values():
        raise SystemExit(f"cosyvoice up: --port {port} is one of the metrics ports {base}..{last}; choose another")
    for name, metrics_port in ports.items():
        reason = _taken(metrics_host or host, metrics_port)
        if reason is not None:
            raise SystemExit(f"cosyvoice up: cannot listen on {metrics_host or host}:{metrics_port} for the {name}'s "
                             f"metrics ({reason}); is another stack running? (--metrics-port 0 picks free ports)")


def check_before_start(model_dir: str | None, host: str, port: int) -> None:
    """What would make a child fail after the others have loaded: one line now instead."""
    if not 0 <= port <= 65535:
        raise SystemExit(f"cosyvoice up: --port {port} is not in 0..65535")
    if model_dir is not None:
        from services.common.modeldir.layout import ModelDir, ModelDirError

        try:
            ModelDir.open(model_dir)
        except ModelDirError as exc:
            raise SystemExit(f"cosyvoice up: --model-dir: {exc}") from None
    if port:  # the gateway binds last, after every stage has loaded: find a taken port first
        reason = _taken(host, port)
        if reason is not None:
            raise SystemExit(f"cosyvoice up: cannot listen on {host}:{port} ({reason}); "
                             "is another stack running? (--port 0 picks a free port)")


def ensure_model_dir(model_dir: str | None) -> Path:
    if model_dir:
        return Path(model_dir)
    if not (DEFAULT_TINY_DIR / "cosyvoice2.yaml").is_file():
        from services.tinymodel.writer import write_tiny_model

        print(f"no --model-dir: writing the random-weight tiny model to {DEFAULT_TINY_DIR} (it makes noise, not speech)")
        write_tiny_model(DEFAULT_TINY_DIR)
    from services.tinymodel.prompt_audio import PROMPT_WAV, write_prompt_sample

    if not (DEFAULT_TINY_DIR / PROMPT_WAV).is_file():  # a tiny model cached by an older version
        write_prompt_sample(DEFAULT_TINY_DIR)
    return DEFAULT_TINY_DIR


def start_stack(
    model_dir: Path,
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 600.0,
    stage_args: Sequence[str] = (),
    gateway_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    internal_host: str = "127.0.0.1",
) -> list[Child]:
    """The four stages, then the gateway pointed at them; returned gateway first. Extra
    flags go to every stage (`stage_args`) or to the gateway, after ours, so they win.
    Three interfaces: `host` the public gateway's, `internal_host` the stages' (only the
    gateway calls them), `metrics_host` every /metrics server's ("": each service's own host).
    `metrics_port` is the gateway's /metrics port, the stages' follow it (0, the default
    here: free ports, so tools that start a stack never collide; -1: none). On failure,
    whatever was started is stopped again. The children are tied to the calling thread's
    life (Linux PDEATHSIG), so call this from a thread that lives as long as the stack should."""
    env = dict(os.environ) if env is None else env
    ports = metrics_ports(metrics_port)

    def metrics_args(name: str) -> list[str]:
        return ["--metrics-port", str(ports[name]), *(["--metrics-host", metrics_host] if metrics_host else [])]

    children: list[Child] = []
    try:
        for index, name in enumerate(STAGES):
            args = ["--host", internal_host, "--port", "0", "--model-dir", str(model_dir),
                    "--device", _stage_device(device, index), *metrics_args(name), *stage_args]
            children.append(_start(name, args, env, timeout))
        addresses = {c.name: c.address for c in children}
        args = ["--host", host, "--port", str(port), "--llm-addr", addresses["llm"],
                "--flow-addr", addresses["flow"], "--vocoder-addr", addresses["vocoder"],
                "--frontend-addr", addresses["frontend"], *metrics_args("gateway"), *gateway_args]
        children.insert(0, _start("gateway", args, env, timeout))
    except BaseException:
        stop_all(children, grace=5.0)
        raise
    return children


def start_http(
    gateway: Child, host: str, port: int, metrics_port: int, metrics_host: str, args: Sequence[str],
    env: dict[str, str] | None, timeout: float,
) -> Child:
    """The HTTP front, a client of `gateway` (on loopback when the gateway listens everywhere)."""
    gateway_host, gateway_port = gateway.address.rsplit(":", 1)
    if gateway_host in ("0.0.0.0", "::", "[::]", ""):
        gateway_host = "127.0.0.1"
    flags = ["--host", host, "--port", str(port), "--gateway-addr", f"{gateway_host}:{gateway_port}",
             "--metrics-port", str(metrics_port), *(["--metrics-host", metrics_host] if metrics_host else []), *args]
    return _start("http", flags, dict(os.environ) if env is None else env, timeout)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cosyvoice up", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", help="CosyVoice2 model directory (default: generate the tiny model)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: stage i on GPU i mod count")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the public gateway listens on (default 127.0.0.1; 0.0.0.0: every interface)")
    parser.add_argument("--internal-host", default="127.0.0.1",
                        help="interface the four stages listen on; only the gateway calls them (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gateway port (default 50051; 0: any free port)")
    parser.add_argument("--http-port", type=int, default=None,
                        help="the HTTP front's port on --host (default 8080; with --port 0, a free port too; "
                             "-1: no HTTP front)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help="the gateway's /metrics port N; llm, flow, vocoder, frontend get N+1..N+4 "
                             "(0: free ports; -1: no metrics)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="interface every /metrics server listens on (default 127.0.0.1, whatever --host is)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each stage (default 600)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads per stage (default: 1 on cpu, so the processes do not "
                             "oversubscribe the cores; torch's default on cuda)")
    parser.add_argument("--max-restarts", type=int, default=5,
                        help="restart a service that dies, at most N times within 5 minutes, with back-off "
                             "from 1 s to 30 s; then stop the stack and exit 1 (default 5; 0: never restart)")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help="on SIGINT/SIGTERM, seconds in-flight streams get to finish before they are cut "
                             "(every service's --grace-seconds; default: theirs, 10)")
    parser.add_argument("--speaker-db", default=None,
                        help="registered speakers: a SQLite file or :memory: (default: the gateway's, "
                             "~/.cache/cosyvoice/speakers.db)")
    up_security.add_arguments(parser)
    args = parser.parse_args(argv)
    num_threads = args.num_threads if args.num_threads is not None else (1 if args.device == "cpu" else 0)
    check_before_start(args.model_dir, args.host, args.port)
    http_port = args.http_port if args.http_port is not None else (DEFAULT_HTTP_PORT if args.port else 0)
    if http_port > 0:
        check_before_start(None, args.host, http_port)
    check_metrics_ports(args.host, args.metrics_host, args.port, args.metrics_port)
    security = up_security.from_args(args)  # reads every certificate and key file now
    model_dir = ensure_model_dir(args.model_dir)
    gateway_args: list[str] = [*security.gateway_args]
    if args.speaker_db is not None:
        gateway_args += ["--speaker-db", args.speaker_db]
    if args.drain_timeout is not None:
        drain = ["--grace-seconds", str(args.drain_timeout)]
        stage_extra, gateway_args = drain, [*gateway_args, *drain]
    else:
        stage_extra = []
    children: list[Child] = []
    # A signal handler must not take locks: Event.set() in a handler that interrupts the main
    # thread inside the same Event's wait (or a second signal inside the first handler) waits
    # forever on a lock its own thread holds. Handlers and exit watchers write a byte to a pipe,
    # which the supervisor loop on the main thread reads (os.write is safe in a handler).
    wake_read, wake_write = os.pipe()

    def request_stop(signum: int, frame: object) -> None:
        os.write(wake_write, EXIT_SIGNAL)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    code = 0
    try:
        children = start_stack(
            model_dir, args.device, args.host, args.port, args.start_timeout,
            stage_args=["--num-threads", str(num_threads), *stage_extra, *security.stage_args],
            gateway_args=gateway_args, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
            internal_host=args.internal_host,
        )
        if http_port >= 0:
            # TLS to the gateway as `up` itself dials it (the gateway's CA, its name).
            http_tls = _flags_of(gateway_tls_ca=(args.tls_ca or args.tls_cert) if args.tls_cert else "",
                                 gateway_tls_server_name=args.tls_server_name if args.tls_cert else "")
            children.append(start_http(children[0], args.host, http_port, metrics_ports(args.metrics_port)["http"],
                                       args.metrics_host, http_tls, None, args.start_timeout))
        for child in children:
            print(child.describe(), flush=True)
        stopping = threading.Event()

        def announce_ready() -> None:
            if wait_serving(children[0].address, args.start_timeout, security.ready_tls):
                print(f"ready: cosyvoice synth \"Hello\" -o out.wav --address {children[0].address}", flush=True)
            elif not stopping.is_set():
                print(f"cosyvoice up: could not see the gateway report SERVING (waited up to "
                      f"{args.start_timeout:.0f} s; a health call that fails, e.g. for want of a client "
                      "certificate, ends the wait early)", file=sys.stderr, flush=True)

        # Readiness is awaited beside the supervisor, so a signal ends `up` at once instead of
        # after the start timeout.
        threading.Thread(target=announce_ready, daemon=True).start()
        policy = RestartPolicy(max_restarts=args.max_restarts)
        code = Supervisor(children, restart, policy, wake_read, wake_write).run()
        stopping.set()
    finally:
        # Longer than the services' drain, so in-flight streams finish before any SIGKILL.
        exits = stop_all(children, grace=(args.drain_timeout if args.drain_timeout is not None else 10.0) + 10.0)
    cut = [name for name, exit_code in exits.items() if exit_code == EXIT_STREAMS_CUT]
    if cut:
        print(f"cosyvoice up: {', '.join(cut)} cut streams still in flight at the drain timeout (--drain-timeout)",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STREAMS_CUT)
    if code:
        raise SystemExit(code)
