"""`cosyvoice serve http` refuses a bad setting in one line. (`cosyvoice up` printing and
starting the front: tests/e2e/test_stack_processes.py.)"""

from __future__ import annotations

import subprocess
import sys

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
