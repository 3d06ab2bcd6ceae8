"""`cosyvoice bench voices`: its report and the gateway-metrics reading (the run itself is
exercised by hand; it starts five processes)."""

from __future__ import annotations

import http.server
import threading

import pytest
from prometheus_client import generate_latest

from services.cli.bench_voices import format_result, voice_seconds
from services.common.metrics import make_registry
from gateway.metrics import GatewayMetrics


def test_the_report_shows_both_voices_and_the_saving():
    result = {
        "systems": {
            "inline": {"requests": 4, "errors": 0, "ttfa_p50": 0.30, "ttfa_p90": 0.35, "ttfa_mean": 0.31},
            "registered": {"requests": 4, "errors": 0, "ttfa_p50": 0.25, "ttfa_p90": 0.28, "ttfa_mean": 0.26},
        },
        "saving_p50_seconds": 0.05,
        "ratio_p50": 0.25 / 0.30,
        "paired_saving_median_seconds": 0.047,
        "voice_resolution": {"inline": (4, 0.045), "registered": (4, 0.001)},
    }
    text = format_result(result)
    assert "inline" in text and "registered" in text
    assert "registered saves 50.0 ms" in text and "(registered / inline = 0.833)" in text
    assert "median of the per-pair differences 47.0 ms" in text
    assert "voice resolution, inline: 45.0 ms on average over 4 requests" in text
    assert "voice resolution, registered: 1.0 ms" in text


@pytest.fixture
def metrics_server():
    registry = make_registry()
    metrics = GatewayMetrics(registry)
    for seconds in (0.02, 0.04):
        metrics.voice_duration.labels("inline").observe(seconds)
    metrics.voice_duration.labels("registered").observe(0.001)
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


def test_the_voice_resolution_time_is_read_from_the_gateway_metrics(metrics_server):
    totals = voice_seconds(metrics_server)
    assert totals["inline"][0] == 2 and totals["inline"][1] == pytest.approx(0.06)
    assert totals["registered"] == (1, pytest.approx(0.001))


def test_an_unreachable_metrics_address_gives_none():
    assert voice_seconds("127.0.0.1:1") is None
