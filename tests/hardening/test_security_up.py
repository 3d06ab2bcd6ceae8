"""`cosyvoice up`'s interfaces and security flags: the public gateway on --host, the stages on
--internal-host and every /metrics server on --metrics-host (127.0.0.1 unless asked), TLS, API
keys and mutual TLS between the gateway and the stages passed on as the services' settings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from services.cli import up
from tests.cli.cli_runner import assert_error, cosyvoice
from tests.conftest import ROOT
from tests.hardening.certificates import Pki, make_pki

_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend) (\S+):(\d+) \(metrics (\S+):(\d+)\)$")
STAGES = ("llm", "flow", "vocoder", "frontend")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _GatewayReached(Exception):
    """Raised by the fake _start for the gateway: `up` got as far as starting every process."""


def up_arguments(monkeypatch, model_dir: Path, *flags: str) -> dict[str, list[str]]:  # noqa: ANN001
    """Each service's `serve NAME` flags as `cosyvoice up` would start them (nothing starts)."""
    started: dict[str, list[str]] = {}

    def fake_start(name: str, args: list[str], env: dict[str, str], timeout: float,
                   stop_pipe: tuple[int, int] | None = None) -> up.Child:
        started[name] = list(args)
        if name == "gateway":
            raise _GatewayReached
        host = args[args.index("--host") + 1]
        return up.Child(name, types.SimpleNamespace(poll=lambda: 0), address=f"{host}:1")  # type: ignore[arg-type]

    monkeypatch.setattr(up, "start", fake_start)
    monkeypatch.setattr(up, "wake_on_stop_signals", lambda wake_write: None)
    monkeypatch.setattr(up, "arm_exit_watchdog", lambda seconds: None)  # it would end pytest itself  # pytest keeps its own handlers
    with pytest.raises(_GatewayReached):
        up.main(["--model-dir", str(model_dir), "--port", "0", "--metrics-port", "0", *flags])
    return started


def last(args: list[str], flag: str) -> str | None:
    """The value a service reads for `flag`: its last occurrence wins."""
    values = [args[i + 1] for i, arg in enumerate(args) if arg == flag]
    return values[-1] if values else None


def test_host_0000_exposes_the_gateway_only(monkeypatch, tiny_model_dir):
    started = up_arguments(monkeypatch, tiny_model_dir, "--host", "0.0.0.0")
    assert (last(started["gateway"], "--host"), last(started["gateway"], "--metrics-host")) == ("0.0.0.0", "127.0.0.1")
    for stage in STAGES:
        assert (last(started[stage], "--host"), last(started[stage], "--metrics-host")) == ("127.0.0.1", "127.0.0.1")


def test_internal_and_metrics_hosts_are_their_own_flags(monkeypatch, tiny_model_dir):
    started = up_arguments(monkeypatch, tiny_model_dir, "--internal-host", "127.0.0.2", "--metrics-host", "0.0.0.0")
    assert last(started["gateway"], "--host") == "127.0.0.1"
    assert last(started["gateway"], "--metrics-host") == "0.0.0.0"
    for stage in STAGES:
        assert (last(started[stage], "--host"), last(started[stage], "--metrics-host")) == ("127.0.0.2", "0.0.0.0")


def test_security_flags_become_the_services_settings(monkeypatch, tiny_model_dir, pki, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("a-key\n")
    started = up_arguments(
        monkeypatch, tiny_model_dir, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--api-keys-file", str(keys), "--internal-tls-cert", str(pki.server_cert),
        "--internal-tls-key", str(pki.server_key), "--internal-tls-ca", str(pki.ca),
        "--internal-tls-server-name", "localhost", "--no-reflection",
    )
    gateway = started["gateway"]
    assert {flag: last(gateway, flag) for flag in (
        "--tls-cert", "--tls-key", "--tls-client-ca", "--api-keys-file", "--stage-tls-ca", "--stage-tls-cert",
        "--stage-tls-key", "--stage-tls-server-name", "--reflection")} == {
        "--tls-cert": str(pki.server_cert), "--tls-key": str(pki.server_key), "--tls-client-ca": None,
        "--api-keys-file": str(keys), "--stage-tls-ca": str(pki.ca), "--stage-tls-cert": str(pki.server_cert),
        "--stage-tls-key": str(pki.server_key), "--stage-tls-server-name": "localhost", "--reflection": "false",
    }
    for stage in STAGES:
        assert [last(started[stage], flag) for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--reflection")] \
            == [str(pki.server_cert), str(pki.server_key), str(pki.ca), "false"]


async def test_bad_security_flags_stop_up_before_anything_starts(tiny_model_dir, pki, tmp_path):
    base = ["up", "--model-dir", str(tiny_model_dir), "--port", "0", "--metrics-port", "0"]
    missing = str(tmp_path / "missing.pem")
    assert_error(await cosyvoice(*base, "--tls-cert", missing, "--tls-key", str(pki.server_key)),
                 f"cosyvoice up: --tls-cert: cannot read {missing!r} (No such file or directory)")
    assert_error(await cosyvoice(*base, "--tls-key", str(pki.server_key)),
                 "cosyvoice up: --tls-key is set but --tls-cert is not: TLS needs both")
    assert_error(await cosyvoice(*base, "--api-keys-file", missing),
                 f"cosyvoice up: --api-keys-file: cannot read {missing!r} (No such file or directory)")
    assert_error(await cosyvoice(*base, "--internal-tls-ca", str(pki.ca)),
                 "cosyvoice up: mutual TLS between the gateway and the stages needs --internal-tls-cert, "
                 "--internal-tls-key and --internal-tls-ca")
    assert_error(await cosyvoice(*base, "--tls-ca", str(pki.ca)),
                 "cosyvoice up: --tls-ca and --tls-server-name only mean something with --tls-cert and --tls-key")


@pytest.mark.slow
def test_a_secured_stack_of_five_processes(tiny_model_dir, pki, tmp_path):
    """For real: the gateway on every interface with TLS and keys, the stages and metrics on
    loopback behind mutual TLS, and `cosyvoice synth` through it."""
    keys = tmp_path / "keys.txt"
    keys.write_text("up-test-key\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(tiny_model_dir), "--port", "0",
         "--metrics-port", "0", "--host", "0.0.0.0", "--start-timeout", "300",
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-server-name", "localhost",
         "--api-keys-file", str(keys), "--internal-tls-cert", str(pki.server_cert),
         "--internal-tls-key", str(pki.server_key), "--internal-tls-ca", str(pki.ca)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        bound, ready = {}, ""
        assert process.stdout is not None
        for line in process.stdout:
            match = _LINE.match(line.strip())
            if match:
                bound[match.group(1)] = (match.group(2), match.group(4))
            if line.startswith("ready"):
                ready = line
                break
        assert ready, "up ended before the gateway was SERVING"
        assert bound == {"gateway": ("0.0.0.0", "127.0.0.1"), **{s: ("127.0.0.1", "127.0.0.1") for s in STAGES}}
        port = ready.split("--address ")[1].strip().rsplit(":", 1)[1]
        out = tmp_path / "out.wav"
        synth = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "synth", "Hi.", "-o", str(out), "--address", f"localhost:{port}",
             "--tls-ca", str(pki.ca), "--seed", "1"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COSYVOICE_API_KEY": "up-test-key"},
        )
        assert synth.returncode == 0, synth.stderr
        assert out.stat().st_size > 44
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
