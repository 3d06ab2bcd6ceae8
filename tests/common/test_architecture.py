"""Structural promises: servicers and the gateway import no torch; metrics pass promtool."""

import shutil
import subprocess
import sys

import pytest
from prometheus_client import generate_latest

from tests.conftest import ROOT

TORCH_FREE = [
    "gateway.server",
    "services.cli.synth",
    "services.cli.client",
    "services.cli.speakers",
    "services.cli.main",
    "services.cli.health",
    "services.llm.servicer",
    "services.flow.servicer",
    "services.vocoder.servicer",
    "services.llm.engine.scheduler",
    "services.common.chunking",
    "services.frontend.servicer",
    "services.common.speakers",
    "services.common.speaker_protos",
    "gateway.registry.store",
    "gateway.registry.servicer",
    "gateway.official",
    "gateway.metrics",
    "services.common.metrics",
    "services.common.rpc_metrics",
    "services.common.gpu_metrics",  # torch only when scraped, on a cuda stage
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_no_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{module} pulls in torch\n{result.stderr}"


# Every label any of our metrics may carry (docs/metrics.md); a new one is a contract change.
LABELS = {
    "code", "finish_reason", "le", "outcome", "voice",  # stage and gateway metrics
    "grpc_service", "grpc_method", "grpc_code",  # the RPC interceptor
    "service", "version", "device", "dtype",  # build and model info, GPU memory
    "queue", "stage",  # the gateway's queues and upstream errors
}


def _exposition() -> str:
    import grpc

    from gateway.metrics import GatewayMetrics
    from services.common.gpu_metrics import GpuMemoryCollector
    from services.common.metrics import make_registry, register_model_info, register_process_metrics
    from services.common.rpc_metrics import RpcMetrics
    from services.flow.metrics import FlowMetrics
    from services.frontend.metrics import FrontendMetrics
    from services.llm.metrics import LLMMetrics
    from services.vocoder.metrics import VocoderMetrics

    registry = make_registry()
    LLMMetrics(registry).requests_finished.labels("stop").inc()
    FlowMetrics(registry)
    VocoderMetrics(registry)
    FrontendMetrics(registry).prompts.labels("ok").inc()
    gateway = GatewayMetrics(registry)
    gateway.requests.labels("OK").inc()
    gateway.voice_duration.labels("inline").observe(0.02)
    gateway.upstream_error("flow", grpc.StatusCode.UNAVAILABLE)
    register_process_metrics(registry, "llm")
    register_model_info(registry, "llm", "cpu", "float32")
    registry.register(GpuMemoryCollector("cuda:0", lambda index: 1024, lambda index: 2048))
    RpcMetrics(registry).record("cosyvoice.v1.TextToSpeech", "Synthesize", grpc.StatusCode.OK, 0.5)
    return generate_latest(registry).decode()


def test_metric_names_follow_prometheus_conventions():
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(_exposition()):
        assert family.name.startswith(("cosyvoice_", "process_")), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client appends it once
        for sample in family.samples:
            assert set(sample.labels) <= LABELS, sample.labels


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_is_clean():
    result = subprocess.run(["promtool", "check", "metrics"], input=_exposition(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
