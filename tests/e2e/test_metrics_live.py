"""A live scrape of every service of the in-process stack: what the metrics contract promises
(docs/metrics.md) is there, promtool accepts it, warm-up left no trace, and every status code
(INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED) is counted."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.pb import tts_pb2, tts_pb2_grpc
from tests.stack import running_stack

pytestmark = pytest.mark.slow
SERVICES = ("gateway", "llm", "flow", "vocoder", "frontend")
GRPC_SERVICE = {
    "gateway": "cosyvoice.v1.TextToSpeech",
    "llm": "cosyvoice.v1.SpeechTokenGenerator",
    "flow": "cosyvoice.v1.FlowDecoder",
    "vocoder": "cosyvoice.v1.Vocoder",
    "frontend": "cosyvoice.v1.Frontend",
}
# What each request-driven series reads before any request: warm-up ran through the same
# code, so a leak would show here.
UNTOUCHED_BY_WARM_UP = {
    "llm": ["cosyvoice_llm_generation_tokens_total", "cosyvoice_llm_prompt_tokens_total",
            "cosyvoice_llm_step_batch_size_count", "cosyvoice_llm_time_to_first_token_seconds_count"],
    "flow": ["cosyvoice_flow_mel_frames_total", "cosyvoice_flow_batch_size_count",
             "cosyvoice_flow_chunk_duration_seconds_count"],
    "vocoder": ["cosyvoice_vocoder_audio_seconds_total", "cosyvoice_vocoder_batch_size_count",
                "cosyvoice_vocoder_chunk_duration_seconds_count"],
    "frontend": ["cosyvoice_frontend_texts_total", "cosyvoice_frontend_prompt_duration_seconds_count"],
}
QUEUE_GAUGES = {
    "llm": "cosyvoice_llm_requests_waiting",
    "flow": "cosyvoice_flow_queue_depth",
    "vocoder": "cosyvoice_vocoder_queue_depth",
    "frontend": "cosyvoice_frontend_queue_depth",
}
PROMTOOL = shutil.which("promtool")


class Scrape:
    """One /metrics page, parsed: value(name, **labels) sums the matching samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        matching = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert matching, f"{name}{labels} not exported"
        return sum(matching)


def _get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return reply.read().decode()


async def _scrape_all(stack) -> dict[str, Scrape]:
    hosts = {"gateway": stack.gateway, **{name: getattr(stack, name).host for name in SERVICES[1:]}}
    texts = await asyncio.gather(*(asyncio.to_thread(_get, hosts[name].metrics_address) for name in SERVICES))
    return {name: Scrape(text) for name, text in zip(SERVICES, texts)}


async def _code(call) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def scrapes(tiny_model_dir) -> dict[str, dict[str, Scrape]]:
    """Scrapes before any request and after a good, a bad and an unknown-speaker request, plus
    a call to a method nobody has on every service."""

    async def run() -> dict[str, dict[str, Scrape]]:
        async with running_stack(tiny_model_dir) as stack:
            before = await _scrape_all(stack)
            async with grpc.aio.insecure_channel(stack.address) as channel:
                tts = tts_pb2_grpc.TextToSpeechStub(channel)
                codes = [
                    await _code(tts.Synthesize(tts_pb2.SynthesizeRequest(text="Hello there.", seed=1))),
                    await _code(tts.Synthesize(tts_pb2.SynthesizeRequest(text="   "))),
                    await _code(tts.Synthesize(tts_pb2.SynthesizeRequest(text="Hi.", speaker_id="nobody"))),
                ]
                assert codes == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND]
            for name in SERVICES:
                address = stack.address if name == "gateway" else getattr(stack, name).host.address
                async with grpc.aio.insecure_channel(address) as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await channel.unary_unary(f"/{GRPC_SERVICE[name]}/NoSuchMethod")(b"")
                    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            return {"before": before, "after": await _scrape_all(stack)}

    return asyncio.run(run())


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus provides it)")
@pytest.mark.parametrize("service", SERVICES)
def test_promtool_accepts_a_live_scrape(scrapes, service):
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scrapes["after"][service].text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", list(UNTOUCHED_BY_WARM_UP))
def test_warm_up_leaves_the_request_counters_at_zero(scrapes, service):
    before, after = scrapes["before"][service], scrapes["after"][service]
    for name in UNTOUCHED_BY_WARM_UP[service]:
        assert before.value(name) == 0, f"{service}: warm-up counted in {name}"
    assert after.value(UNTOUCHED_BY_WARM_UP[service][0]) > 0  # ...and real requests are counted


def test_frontend_prompt_outcomes_start_empty(scrapes):
    assert not scrapes["before"]["frontend"].has("cosyvoice_frontend_prompts_total")


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_exports_process_build_and_rpc_metrics(scrapes, service):
    scrape = scrapes["after"][service]
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert scrape.value(name) > 0 or name == "process_cpu_seconds_total", name
    assert scrape.labels("cosyvoice_build_info")[0]["service"] == service
    assert scrape.value("cosyvoice_build_info", service=service) == 1
    unknown = scrape.value(
        "cosyvoice_grpc_server_handled_total",
        grpc_service=GRPC_SERVICE[service], grpc_method="unknown", grpc_code="UNIMPLEMENTED",
    )
    assert unknown == 1
    timed = scrape.value("cosyvoice_grpc_server_handling_seconds_count", grpc_service=GRPC_SERVICE[service])
    assert timed >= 1
    if service != "gateway":
        assert scrape.labels("cosyvoice_model_info") == [{"service": service, "device": "cpu", "dtype": "float32"}]
        assert not scrape.has("cosyvoice_gpu_memory_allocated_bytes")  # cpu: no GPU series
        assert scrape.has(QUEUE_GAUGES[service])


def test_the_gateway_counts_every_code(scrapes):
    scrape = scrapes["after"]["gateway"]
    for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND"):
        assert scrape.value("cosyvoice_gateway_requests_total", code=code) == 1, code
        assert scrape.value(
            "cosyvoice_grpc_server_handled_total", grpc_method="Synthesize", grpc_code=code
        ) == 1, code
    assert scrape.value("cosyvoice_gateway_requests_total", code="UNAVAILABLE") == 0  # present from the start
    assert scrape.value("cosyvoice_gateway_requests_in_flight") == 0
    assert scrape.value("cosyvoice_gateway_real_time_factor_ratio_count") == 1
    assert scrape.value("cosyvoice_gateway_audio_seconds_total") > 0


def test_the_gateway_exports_its_inter_stage_queues(scrapes):
    scrape = scrapes["after"]["gateway"]
    queues = sorted(labels["queue"] for labels in scrape.labels("cosyvoice_gateway_queue_depth"))
    assert queues == ["flow_to_vocoder", "llm_to_flow", "vocoder_to_client"]
    assert scrape.value("cosyvoice_gateway_queue_depth") == 0  # nothing in flight any more


def test_the_llm_reports_its_slots_and_queue(scrapes):
    llm = scrapes["after"]["llm"]
    # Every request has finished: no slot held, nothing waiting, no stream open.
    assert llm.value("cosyvoice_llm_kv_cache_usage_ratio") == 0
    assert llm.value("cosyvoice_llm_requests_waiting") == 0
    assert llm.value("cosyvoice_llm_streams_active") == 0
    assert llm.value("cosyvoice_llm_requests_finished_total") == 1  # stop or length: random weights


def test_stages_count_the_rejections_they_send(scrapes):
    # The LLM never saw the bad requests (the gateway refused them first); the frontend split
    # the good text, and the gateway checked the speaker before any stage was called.
    llm = scrapes["after"]["llm"]
    assert llm.value("cosyvoice_grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") == 1
    assert not [labels for labels in llm.labels("cosyvoice_grpc_server_handled_total")
                if labels["grpc_method"] == "Generate" and labels["grpc_code"] != "OK"]
