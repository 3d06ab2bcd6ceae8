"""The Grafana dashboard (deploy/grafana/dashboards/) queries only metrics the services export,
draws every panel the operators need, and tells replicas apart.

Exported names come from the real services: the in-process stack serves one request, then each
service's registry is scraped. A metric that is renamed or never registered fails here
instead of drawing an empty panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.pb import tts_pb2, tts_pb2_grpc
from tests.conftest import ROOT
from tests.stack import running_stack

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cosyvoice.json"
# Exported only when the stage runs on CUDA (torch.cuda's allocator); this box has no GPU, so
# these two are taken from the contract instead of a scrape.
EXPORTED_ONLY_ON_CUDA = {"cosyvoice_gpu_memory_allocated_bytes", "cosyvoice_gpu_memory_reserved_bytes"}
# What each panel the operators asked for must query (a regex over the panel's expressions).
REQUIRED_PANELS = {
    "time to first audio p50/p99": r"histogram_quantile\(0\.5,.*cosyvoice_gateway_time_to_first_audio_seconds_bucket"
                                   r"|histogram_quantile\(0\.99,.*cosyvoice_gateway_time_to_first_audio_seconds_bucket",
    "real-time factor": r"cosyvoice_gateway_real_time_factor_ratio_bucket",
    "audio seconds per second": r"rate\(cosyvoice_gateway_audio_seconds_total",
    "in flight": r"cosyvoice_gateway_requests_in_flight",
    "llm queue depth": r"cosyvoice_llm_requests_waiting",
    "flow queue depth": r"cosyvoice_flow_queue_depth",
    "vocoder queue depth": r"cosyvoice_vocoder_queue_depth",
    "frontend queue depth": r"cosyvoice_frontend_queue_depth",
    "llm batch size": r"cosyvoice_llm_step_batch_size",
    "flow batch size": r"cosyvoice_flow_batch_size",
    "vocoder batch size": r"cosyvoice_vocoder_batch_size",
    "kv-cache usage": r"cosyvoice_llm_kv_cache_usage_ratio",
    "error rate by code": r"by \([^)]*grpc_code[^)]*\) \(rate\(cosyvoice_grpc_server_handled_total",
    "resident memory": r"process_resident_memory_bytes",
    "gpu memory": r"cosyvoice_gpu_memory_allocated_bytes",
}
# PromQL words that look like metric names: operators, modifiers, and literals.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan", "atan2", "start", "end"}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel.get("type") != "row"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or
    aggregations (followed by `(`), keywords, label names or values (inside {} or `by (...)`),
    durations (inside []) or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # strings first: they may hold { or (
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, samples or not: a labelled metric that has no
    child yet (no error seen) still has its # TYPE line."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count", ""],
                "info": ["_info"], "gaugehistogram": ["_bucket", "_gsum", "_gcount"]}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{code!="OK", x=~"b(c)"}'
            '[$__rate_interval]))) / on (instance) group_left b_total offset 5m + process_open_fds')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "process_open_fds"}


@pytest.mark.slow  # the whole in-process stack and one synthesis: several seconds
async def test_every_query_names_an_exported_metric(tiny_model_dir: Path) -> None:
    transcript = (tiny_model_dir / "prompt_sample.txt").read_text().strip()
    request = tts_pb2.SynthesizeRequest(
        text="Hello there.", stream=True,
        prompt=tts_pb2.PromptAudio(audio=(tiny_model_dir / "prompt_sample.wav").read_bytes(), text=transcript))
    async with running_stack(tiny_model_dir) as stack:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            chunks = [c async for c in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=300)]
        assert chunks
        registries = [app.host.registry for app in (stack.llm, stack.flow, stack.vocoder, stack.frontend)]
        registries.append(stack.gateway.registry)
        exported = set().union(*(exported_names(generate_latest(r).decode()) for r in registries))
    queried = {name: panel["title"] for panel in panels(load_dashboard()) for target in panel["targets"]
               for name in metric_names(target["expr"])}
    missing = {name: title for name, title in queried.items() if name not in exported | EXPORTED_ONLY_ON_CUDA}
    assert not missing, f"queried but not exported (metric: panel): {missing}"


def test_the_panels_operators_need_exist() -> None:
    exprs = [target["expr"] for panel in panels(load_dashboard()) for target in panel["targets"]]
    absent = [name for name, pattern in REQUIRED_PANELS.items() if not any(re.search(pattern, e) for e in exprs)]
    assert not absent, f"no panel for: {absent}"
    quantiles = {q for e in exprs if "time_to_first_audio" in e for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert quantiles == {"0.5", "0.99"}


def test_every_series_is_labelled_per_replica() -> None:
    for panel in panels(load_dashboard()):
        for target in panel["targets"]:
            assert "{{instance}}" in target.get("legendFormat", ""), (panel["title"], target["refId"])
            # An aggregation that drops `instance` would merge the replicas into one line.
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"]):
                assert "instance" in grouping, (panel["title"], target["expr"])


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    # Grafana's $__rate_interval is not PromQL; any duration stands in for the parse.
    rules = [{"record": f"dashboard:panel{panel['id']}:{target['refId']}",
              "expr": target["expr"].replace("$__rate_interval", "1m")}
             for panel in panels(load_dashboard()) for target in panel["targets"]]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
