"""`cosyvoice bench voices`: its report and the frontend-metrics reading (the run itself is
exercised by hand; it starts five processes)."""

from __future__ import annotations

import http.server
import threading

import pytest
from prometheus_client import generate_latest

from services.cli.bench_voices import format_result, frontend_prompt_seconds
from services.common.metrics import make_registry
from services.frontend.metrics import FrontendMetrics


def test_the_report_shows_both_voices_and_the_saving():
    result = {
        "systems": {
            "inline": {"requests": 4, "errors": 0, "ttfa_p50": 0.30, "ttfa_p90": 0.35, "ttfa_mean": 0.31},
            "registered": {"requests": 4, "errors": 0, "ttfa_p50": 0.25, "ttfa_p90": 0.28, "ttfa_mean": 0.26},
        },
        "saving_p50_seconds": 0.05,
        "ratio_p50": 0.25 / 0.30,
        "frontend_prompts": (4, 0.045),
    }
    text = format_result(result)
    assert "inline" in text and "registered" in text
    assert "registered saves 50.0 ms" in text and "(registered / inline = 0.833)" in text
    assert "encoded 4 prompts, 45.0 ms each" in text


@pytest.fixture
def metrics_server():
    registry = make_registry()
    metrics = FrontendMetrics(registry)
    for seconds in (0.02, 0.04):
        metrics.prompt_duration.observe(seconds)
    body = generate_latest(registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_frontend_prompt_time_is_read_from_its_metrics(metrics_server):
    count, total = frontend_prompt_seconds(metrics_server)
    assert count == 2 and total == pytest.approx(0.06)


def test_an_unreachable_metrics_address_gives_none():
    assert frontend_prompt_seconds("127.0.0.1:1") is None
