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
import sys
import threading
from pathlib import Path
from typing import Sequence

from services.cli import up_security
from services.cli.children import (  # noqa: F401  (Child, stop_all, wait_serving: imported from here by tools)
    Child, StopRequested, restart, start, stop_all, wait_serving,
)
from services.cli.supervisor import RestartPolicy, Supervisor, arm_exit_watchdog, wake_on_stop_signals
from services.common.config import DEFAULT_METRICS_PORTS
from services.common.drain import EXIT_STREAMS_CUT
from services.http.config import DEFAULT_HTTP_PORT

STAGES = ("llm", "flow", "vocoder", "frontend")
DEFAULT_METRICS_PORT = DEFAULT_METRICS_PORTS["gateway"]
# Each service's metrics port relative to the gateway's, as in the fixed defaults.
METRICS_PORT_OFFSETS = {name: port - DEFAULT_METRICS_PORT for name, port in DEFAULT_METRICS_PORTS.items()}
DEFAULT_TINY_DIR = Path(os.environ.get("COSYVOICE_CACHE", Path.home() / ".cache" / "cosyvoice")) / "tiny-model"


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
    stop_pipe: tuple[int, int] | None = None,
) -> list[Child]:
    """The four stages, then the gateway pointed at them; returned gateway first. Extra
    flags go to every stage (`stage_args`) or to the gateway, after ours, so they win.
    Three interfaces: `host` the public gateway's, `internal_host` the stages' (only the
    gateway calls them), `metrics_host` every /metrics server's ("": each service's own host).
    `metrics_port` is the gateway's /metrics port, the stages' follow it (0, the default
    here: free ports, so tools that start a stack never collide; -1: none). On failure,
    whatever was started is stopped again. The children are tied to the calling thread's
    life (Linux PDEATHSIG), so call this from a thread that lives as long as the stack should.
    `stop_pipe`: the supervisor's wake-up pipe; a stop signal raises StopRequested at once."""
    env = dict(os.environ) if env is None else env
    ports = metrics_ports(metrics_port)

    def metrics_args(name: str) -> list[str]:
        return ["--metrics-port", str(ports[name]), *(["--metrics-host", metrics_host] if metrics_host else [])]

    children: list[Child] = []
    try:
        for index, name in enumerate(STAGES):
            args = ["--host", internal_host, "--port", "0", "--model-dir", str(model_dir),
                    "--device", _stage_device(device, index), *metrics_args(name), *stage_args]
            children.append(start(name, args, env, timeout, stop_pipe))
        addresses = {c.name: c.address for c in children}
        args = ["--host", host, "--port", str(port), "--llm-addr", addresses["llm"],
                "--flow-addr", addresses["flow"], "--vocoder-addr", addresses["vocoder"],
                "--frontend-addr", addresses["frontend"], *metrics_args("gateway"), *gateway_args]
        children.insert(0, start("gateway", args, env, timeout, stop_pipe))
    except BaseException:
        stop_all(children, grace=5.0)
        raise
    return children


def start_http(
    gateway: Child, host: str, port: int, metrics_port: int, metrics_host: str, args: Sequence[str],
    env: dict[str, str] | None, timeout: float, stop_pipe: tuple[int, int] | None = None,
) -> Child:
    """The HTTP front, a client of `gateway` (on loopback when the gateway listens everywhere)."""
    gateway_host, gateway_port = gateway.address.rsplit(":", 1)
    if gateway_host in ("0.0.0.0", "::", "[::]", ""):
        gateway_host = "127.0.0.1"
    flags = ["--host", host, "--port", str(port), "--gateway-addr", f"{gateway_host}:{gateway_port}",
             "--metrics-port", str(metrics_port), *(["--metrics-host", metrics_host] if metrics_host else []), *args]
    return start("http", flags, dict(os.environ) if env is None else env, timeout, stop_pipe)


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
    wake_read, wake_write = os.pipe()
    wake_on_stop_signals(wake_write)
    code = 0
    try:
        children = start_stack(
            model_dir, args.device, args.host, args.port, args.start_timeout,
            stage_args=["--num-threads", str(num_threads), *stage_extra, *security.stage_args],
            gateway_args=gateway_args, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
            internal_host=args.internal_host, stop_pipe=(wake_read, wake_write),
        )
        if http_port >= 0:
            # TLS to the gateway as `up` itself dials it (the gateway's CA, its name).
            http_tls = _flags_of(gateway_tls_ca=(args.tls_ca or args.tls_cert) if args.tls_cert else "",
                                 gateway_tls_server_name=args.tls_server_name if args.tls_cert else "")
            children.append(start_http(children[0], args.host, http_port, metrics_ports(args.metrics_port)["http"],
                                       args.metrics_host, http_tls, None, args.start_timeout,
                                       (wake_read, wake_write)))
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
    except StopRequested as stopped:  # what had started is stopped already, or below
        print(f"cosyvoice up: stopped by a signal while the {stopped} process was starting", file=sys.stderr, flush=True)
    finally:
        # Longer than the services' drain, so in-flight streams finish before any SIGKILL.
        grace = (args.drain_timeout if args.drain_timeout is not None else 10.0) + 10.0
        if children:  # stop_all takes at most three graces (front, gateway, stages): nothing may hang past that
            arm_exit_watchdog(3 * grace + 30.0)
        exits = stop_all(children, grace=grace)
    cut = [name for name, exit_code in exits.items() if exit_code == EXIT_STREAMS_CUT]
    if cut:
        print(f"cosyvoice up: {', '.join(cut)} cut streams still in flight at the drain timeout (--drain-timeout)",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STREAMS_CUT)
    if code:
        raise SystemExit(code)
