"""scripts/reliability.py, the source of docs/reliability.md's figures: its cheapest scenario
(drain: two `cosyvoice up` runs, SIGTERM with streams in flight) end to end on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_drain_scenario_reports_its_figures(tiny_model_dir, tmp_path):
    out = tmp_path / "reliability.json"
    command = [sys.executable, "scripts/reliability.py", "--only", "drain", "--model-dir", str(tiny_model_dir),
               "--drain-streams", "1", "--cut-timeout", "1", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("command: ")  # the exact command heads the report
    measured = json.loads(out.read_text())
    assert list(measured["scenarios"]) == ["drain"]
    released, cut = measured["scenarios"]["drain"]["released"], measured["scenarios"]["drain"]["never_released"]
    for run in (released, cut):
        assert all(run["checks"].values()), run["checks"]
        assert run["new_request"] == {
            "code": "UNAVAILABLE", "details": "gateway: shutting down (draining); retry on another replica",
            "sigterm_to_answer_ms": run["new_request"]["sigterm_to_answer_ms"]}
        assert 0 <= run["sigterm_to_not_serving_ms"] < 30_000
    assert released["up_exit_code"] == 0 and released["stream_outcomes"] == {"OK": 1}
    assert cut["up_exit_code"] == 3
    assert cut["stream_outcomes"] == {
        "UNAVAILABLE: gateway: shutting down; the stream was cut at the 1 s drain timeout (grace_seconds)": 1}
    assert 1000 <= cut["sigterm_to_stream_end"]["max_ms"] < 6000  # cut at the drain timeout, not before
    assert measured["wall_seconds"] > 0
