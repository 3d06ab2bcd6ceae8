"""`cosyvoice serve http` refuses a bad setting in one line. (`cosyvoice up` printing and
starting the front: tests/e2e/test_stack_processes.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _serve_http(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", "serve", "http", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serve_http_refuses_a_bad_setting_in_one_line(tmp_path):
    bad_port = _serve_http("--port", "abc")
    assert bad_port.returncode == 1
    assert bad_port.stderr.strip().splitlines() == [
        "cosyvoice serve http: --port / COSYVOICE_HTTP_PORT: cannot read 'abc' as int"]
    missing_ca = _serve_http("--gateway-tls-ca", str(tmp_path / "missing.pem"))
    assert missing_ca.returncode == 1
    assert missing_ca.stderr.strip().splitlines()[-1].startswith(
        "cosyvoice serve http: --gateway-tls-ca / COSYVOICE_HTTP_GATEWAY_TLS_CA: cannot read")
    bad_gateway = _serve_http("--gateway-addr", "nowhere")
    assert "--gateway-addr / COSYVOICE_HTTP_GATEWAY_ADDR must be host:port (got 'nowhere')" in bad_gateway.stderr


def test_the_front_imports_no_torch():
    probe = ("import sys; import services.http.server, services.http.app; "
             "print(sorted(m for m in ('torch', 'torchaudio', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class _HttpReached(Exception):
    pass


def test_up_starts_the_front_on_the_public_host_dialling_the_gateway_as_up_does(monkeypatch, tiny_model_dir, tmp_path):
    """`up --host 0.0.0.0 --tls-cert ...`: the front listens on 0.0.0.0, dials the gateway on
    loopback with the gateway's CA and name (nothing is started: start is recorded)."""
    import types

    from services.cli import up
    from tests.hardening.certificates import make_pki

    pki = make_pki(tmp_path / "pki")
    started: dict[str, list[str]] = {}

    def fake_start(name: str, args: list[str], env: dict[str, str], timeout: float,
                   stop_pipe: tuple[int, int] | None = None) -> up.Child:
        started[name] = list(args)
        if name == "http":
            raise _HttpReached
        return up.Child(name, types.SimpleNamespace(poll=lambda: 0), address=f"{args[args.index('--host') + 1]}:4321")

    monkeypatch.setattr(up, "start", fake_start)
    monkeypatch.setattr(up, "wake_on_stop_signals", lambda wake_write: None)
    monkeypatch.setattr(up, "arm_exit_watchdog", lambda seconds: None)  # it would end pytest itself
    with pytest.raises(_HttpReached):
        up.main(["--model-dir", str(tiny_model_dir), "--port", "0", "--metrics-port", "0", "--host", "0.0.0.0",
                 "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-ca", str(pki.ca),
                 "--tls-server-name", "localhost"])
    http = started["http"]

    def last(flag: str) -> str:
        return [http[i + 1] for i, arg in enumerate(http) if arg == flag][-1]

    assert (last("--host"), last("--port"), last("--gateway-addr")) == ("0.0.0.0", "0", "127.0.0.1:4321")
    assert (last("--gateway-tls-ca"), last("--gateway-tls-server-name")) == (str(pki.ca), "localhost")
    assert (last("--metrics-port"), last("--metrics-host")) == ("0", "127.0.0.1")
