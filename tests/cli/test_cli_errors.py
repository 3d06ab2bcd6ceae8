"""The CLI's own error paths: one line on stderr naming the problem, exit code 1, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == expected


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("serve", "llm", "--port", "99999"), None,
         "cosyvoice serve llm: --port / COSYVOICE_LLM_PORT must be in 0..65535 (got 99999)"),
        (("serve", "frontend"), {"COSYVOICE_FRONTEND_NUM_WORKERS": "abc"},
         "cosyvoice serve frontend: --num-workers / COSYVOICE_FRONTEND_NUM_WORKERS: cannot read 'abc' as int"),
        (("serve", "gateway"), None,
         "cosyvoice serve gateway: --llm-addr / COSYVOICE_GATEWAY_LLM_ADDR is required, as host:port (got '')"),
        (("up", "--port", "99999"), None, "cosyvoice up: --port 99999 is not in 0..65535"),
        (("serve", "nope"), None, "cosyvoice serve: unknown service 'nope' (one of llm, flow, vocoder, frontend, gateway, http)"),
        (("serve", "flow"), None,
         "cosyvoice serve flow: --model-dir / COSYVOICE_FLOW_MODEL_DIR is required: a CosyVoice2 model directory"),
        (("up", "--port", "0", "--metrics-port", "65533"), None,
         "cosyvoice up: --metrics-port 65533 must be -1, 0 or N with N..N+5 in 1..65535"),
        (("up", "--model-dir", "/nonexistent/model"), None,
         "cosyvoice up: --model-dir: model directory /nonexistent/model does not exist or is not a directory"),
    ],
)
def test_bad_settings_print_one_line(args, env, expected):
    assert_one_line_error(run_cli(*args, env=env), expected)


def test_up_refuses_a_taken_port_before_starting_anything():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_cli("up", "--port", str(port))
    assert_one_line_error(
        result,
        f"cosyvoice up: cannot listen on 127.0.0.1:{port} (Address already in use); is another stack running? "
        "(--port 0 picks a free port)",
    )


def test_up_refuses_a_taken_metrics_port_before_starting_anything():
    with socket.create_server(("127.0.0.1", 0)) as server:
        taken = server.getsockname()[1]  # the gateway's, checked first
        result = run_cli("up", "--port", "0", "--metrics-port", str(taken))
    assert_one_line_error(
        result,
        f"cosyvoice up: cannot listen on 127.0.0.1:{taken} for the gateway's metrics (Address already in use); "
        "is another stack running? (--metrics-port 0 picks free ports)",
    )


def test_make_tiny_model_never_overwrites_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "llm.pt").write_text("real weights, say")
    result = run_cli("make-tiny-model", str(tmp_path))
    assert_one_line_error(
        result, f"cosyvoice make-tiny-model: {tmp_path} is not empty; choose a new directory or pass --force"
    )
    assert (tmp_path / "llm.pt").read_text() == "real weights, say"
