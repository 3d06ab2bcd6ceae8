"""`cosyvoice bench stages` on the tiny model: each stage alone over real gRPC, one request per
level, the vocoder fed the flow's recorded mel and the flow the LLM's recorded tokens. No
timing is asserted: only that each stage did the work and the report adds up."""

import asyncio
import math

import pytest

from services.cli.bench_stages import (
    Outcome,
    add_ratios,
    closed_loop,
    format_stage_table,
    run_stages,
    summarize_stage,
)
from services.common.chunking import ChunkPolicy
from tests.stack import running_stack


async def test_closed_loop_bounds_concurrency_and_records_errors():
    in_flight = most = 0

    async def call(index):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        if index == 2:
            raise RuntimeError("boom")
        return Outcome(units=10.0, first_output=0.01 * index)

    outcomes, wall = await closed_loop(call, 7, 3, timeout=None)
    assert most == 3 and len(outcomes) == 7 and wall >= 0
    assert outcomes[2].error == "RuntimeError: boom"
    level = summarize_stage("llm", 3, outcomes, wall=2.0)
    assert (level.requests, level.errors, level.units, level.throughput) == (7, 1, 60.0, 30.0)
    assert level.first_errors == ["RuntimeError: boom"]


def test_ratios_are_to_the_first_level():
    levels = [summarize_stage("flow", c, [Outcome(units=u)], wall=1.0) for c, u in ((1, 10.0), (4, 25.0))]
    assert [level.ratio for level in add_ratios(levels)] == [1.0, 2.5]


async def test_each_stage_alone_on_the_tiny_model(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        addresses = {name: getattr(stack, name).host.address for name in ("llm", "flow", "vocoder")}
        metrics = {name: f"http://{getattr(stack, name).host.metrics_address}/metrics"
                   for name in ("llm", "flow", "vocoder")}
        results = await run_stages(addresses, [1, 2], ["Hi."], ChunkPolicy(), requests=1, timeout=120,
                                   metrics=metrics)
    assert list(results) == ["llm", "flow", "vocoder"]
    for stage, levels in results.items():
        assert [level.concurrency for level in levels] == [1, 2]
        for level in levels:
            assert level.requests == 1 and level.errors == 0, level.first_errors
            assert level.units > 0 and level.throughput > 0 and not math.isnan(level.first_output_p50)
            # From the stage's own /metrics: at least one item per compute call, some compute.
            assert level.mean_batch >= 1 and level.busy > 0, (stage, level)
        assert levels[0].ratio == 1.0 and levels[1].ratio > 0
    # Same input every level: the same amount of work (tokens, frames, audio) per request.
    for stage in ("flow", "vocoder"):
        assert results[stage][0].units == pytest.approx(results[stage][1].units)
    # The flow emits 2 mel frames per token, the vocoder 1/50 s per frame.
    assert results["flow"][0].units == 2 * results["llm"][0].units
    assert results["vocoder"][0].units == pytest.approx(results["flow"][0].units / 50)
    table = format_stage_table(results)
    for word in ("tokens/s", "mel frames/s", "audio-s/s", "1.00×", "batch", "busy"):
        assert word in table


@pytest.mark.slow
def test_cli_starts_the_stage_processes_and_reads_their_metrics(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from services.cli import bench, bench_cli

    for name in bench.THREAD_ENV:  # main() sets these for itself; restored afterwards
        monkeypatch.setenv(name, "1")
    out = tmp_path / "stages.json"
    bench_cli.main(["stages", "--model-dir", str(tiny_model_dir), "--concurrency", "1", "--requests", "1",
                    "--text", "Hi.", "--json", str(out)])
    import json

    result = json.loads(out.read_text())
    (variant,) = result["variants"]
    assert variant["variant"] == "default" and list(variant["stages"]) == ["llm", "flow", "vocoder"]
    for stage, (level,) in variant["stages"].items():
        assert level["errors"] == 0 and level["units"] > 0, (stage, level)
        assert level["mean_batch"] >= 1 and level["busy"] > 0, (stage, level)  # the processes' /metrics
    assert result["config"]["mode"] == "stages" and result["config"]["load"]["before"]["nproc"] >= 1
    assert "mel frames/s" in capsys.readouterr().out
