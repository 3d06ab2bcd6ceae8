"""scripts/measure_memory.py, the source of docs/deploy.md's memory table, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_every_service_reports_its_memory_before_and_after_a_request(tiny_model_dir, tmp_path):
    out = tmp_path / "memory.json"
    result = subprocess.run(
        [sys.executable, "scripts/measure_memory.py", "--model-dir", str(tiny_model_dir), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(out.read_text())
    assert measured["device"] == "cpu"
    for service in ("gateway", "llm", "flow", "vocoder", "frontend"):
        for phase in ("after_warm_up", "after_one_request"):
            assert measured[service][phase]["rss"] > 10e6, (service, phase)
        assert f"| {service} | " in result.stdout  # the table's row
