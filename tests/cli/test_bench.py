"""`cosyvoice bench`: the accounting on synthetic arrivals, the bounded load loop, and a tiny
end-to-end run of the machinery over the in-process stack. No timing is asserted."""

import asyncio
import json
import math

import numpy as np
import pytest

from services.cli import bench
from services.cli import bench_report
from services.cli.bench import (
    BenchRequest,
    GatewayTarget,
    MonolithTarget,
    Received,
    run_bench,
    run_level,
)
from services.cli.bench_cli import build_parser
from services.cli.bench_report import RequestRecord, count_underruns, percentile, summarize
from tests.stack import running_stack


# --- percentiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 25, 50, 90, 99, 100])
def test_percentile_interpolates_like_numpy(q):
    values = list(np.random.default_rng(0).exponential(size=37))
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_of_one_and_of_none():
    assert percentile([0.3], 99) == 0.3
    assert math.isnan(percentile([], 50))
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # order of arrival does not matter


# --- underruns -----------------------------------------------------------------------------


def test_chunks_arriving_while_audio_plays_are_no_underrun():
    # 1 s chunks arriving every 0.5 s: the buffer only grows.
    assert count_underruns([0.0, 0.5, 1.0, 1.5], [1.0] * 4) == 0


def test_a_chunk_after_the_buffer_ran_dry_is_an_underrun():
    # Plays 0..1, then 1..2; the third chunk comes at 2.5, after the audio ended at 2.
    assert count_underruns([0.0, 0.9, 2.5], [1.0, 1.0, 1.0]) == 1


def test_arriving_exactly_when_playback_ends_is_in_time():
    assert count_underruns([0.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 0


def test_playback_resumes_at_the_late_chunk_so_one_stall_counts_once():
    # Stall: chunk 3 arrives at 3.0 (audio ended at 2.0), so playback restarts at 3.0 and runs
    # to 4.0; chunk 4 at 3.1 is in time. (Against the original schedule, 0 + 3 s = 3.0, it
    # would count as late too.)
    assert count_underruns([0.0, 0.5, 3.0, 3.1], [1.0] * 4) == 1
    # Two separate stalls count twice.
    assert count_underruns([0.0, 2.0, 4.0], [1.0, 1.0, 1.0]) == 2


def test_short_first_chunk_then_a_slow_second_one():
    assert count_underruns([0.0, 0.25], [0.2, 4.0]) == 1
    assert count_underruns([0.0], [0.2]) == 0
    assert count_underruns([], []) == 0


# --- one level's statistics ----------------------------------------------------------------


def _record(submitted, arrivals, seconds, stage=None, error=None, finished=None):
    stages = None if stage is None else (stage / 2, stage / 4, stage / 4)  # llm, flow, vocoder
    return RequestRecord(submitted, finished if finished is not None else arrivals[-1], list(arrivals),
                         list(seconds), stages, error)


def test_summarize_aggregates_throughput_ttfa_underruns_and_overhead():
    records = [
        _record(0.0, [0.2, 0.9, 3.0], [1.0, 2.0, 1.0], stage=0.18),  # ttfa 0.2; in time (plays to 3.2)
        _record(0.0, [0.4, 1.6, 2.0], [1.0, 1.0, 1.0], stage=0.35),  # ttfa 0.4; 1.6 > 1.4: one underrun
        _record(1.0, [1.3], [2.0], stage=0.25),  # ttfa 0.3
        RequestRecord(1.0, 1.1, error="UNAVAILABLE: stage down"),  # failed: no audio, not in the stats
    ]
    stats = summarize("split", 4, records, wall_seconds=4.0)
    assert (stats.requests, stats.errors) == (4, 1)
    assert stats.audio_seconds == pytest.approx(4.0 + 3.0 + 2.0)
    assert stats.throughput == pytest.approx(9.0 / 4.0)
    assert stats.ttfa_p50 == pytest.approx(0.3)
    assert stats.ttfa_p99 == pytest.approx(percentile([0.2, 0.3, 0.4], 99))
    assert stats.ttfa_mean == pytest.approx(0.3)
    assert (stats.chunks, stats.underruns, stats.underrun_requests) == (7, 1, 1)
    assert stats.overhead_mean == pytest.approx(((0.2 - 0.18) + (0.4 - 0.35) + (0.3 - 0.25)) / 3)
    assert stats.stage_first_chunk_mean == pytest.approx((0.18 + 0.35 + 0.25) / 3)
    assert stats.first_chunk_llm_mean == pytest.approx((0.18 + 0.35 + 0.25) / 6)
    assert stats.first_chunk_flow_mean == stats.first_chunk_vocoder_mean == pytest.approx((0.18 + 0.35 + 0.25) / 12)
    assert stats.first_errors == ["UNAVAILABLE: stage down"]


def test_requests_without_stage_timings_have_no_overhead():
    stats = summarize("split", 1, [_record(0.0, [0.5], [1.0])], wall_seconds=1.0)
    assert stats.ttfa_p50 == pytest.approx(0.5)
    assert math.isnan(stats.overhead_mean)


def test_compare_and_targets():
    split = summarize("split", 1, [_record(0.0, [0.21], [3.0], stage=0.2)], wall_seconds=1.0)
    mono = summarize("monolith", 1, [_record(0.0, [0.2], [3.0], stage=0.2)], wall_seconds=0.8)
    ratios = bench_report.compare(split, mono)
    assert ratios["throughput"] == pytest.approx(0.8)
    assert ratios["ttfa_p50"] == pytest.approx(1.05)
    assert ratios["overhead_delta_seconds"] == pytest.approx(0.01)
    targets = bench_report.check_targets([{"concurrency": 1, "split": split, "monolith": mono, "split_over_monolith": ratios}])
    assert [(t["target"].split()[1], t["met"]) for t in targets] == [("throughput", False), ("first-audio", True)]


# --- the bounded load loop -----------------------------------------------------------------


class FakeTarget:
    """Two chunks per request; counts how many requests are in flight at once."""

    def __init__(self, fail_index=None):
        self.in_flight = 0
        self.most_in_flight = 0
        self.seen = []
        self.fail_index = fail_index

    async def stream(self, request):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.seen.append(request)
        try:
            await asyncio.sleep(0)
            if request.index == self.fail_index:
                raise RuntimeError("boom")
            yield Received(0, 24000, (0.001, 0.002, 0.003))  # timings on an empty piece: kept, no arrival
            await asyncio.sleep(0)
            yield Received(2400, 24000, None)
            await asyncio.sleep(0)
            yield Received(4800, 24000, None)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 3, 16])
async def test_run_level_sends_every_request_with_at_most_c_in_flight(concurrency):
    target = FakeTarget(fail_index=4)
    requests = bench.make_requests(10, ["a", "b"], seed=7)
    records, wall = await run_level(target, requests, concurrency)
    assert target.most_in_flight == min(concurrency, 10)
    assert sorted(r.index for r in target.seen) == list(range(10))
    assert [r.seed for r in requests] == list(range(7, 17)) and requests[3].text == "b"
    assert wall >= 0 and len(records) == 10
    assert records[4].error == "RuntimeError: boom" and not records[4].ok
    ok = [r for i, r in enumerate(records) if i != 4]
    assert all(len(r.arrivals) == 2 and r.audio_seconds == pytest.approx(0.3) and r.stages == (0.001, 0.002, 0.003)
               for r in ok)


async def test_a_request_past_its_timeout_is_recorded_as_an_error():
    class Stuck:
        async def stream(self, request):
            yield Received(10, 100, None)
            await asyncio.Event().wait()

    record = await bench.measure(Stuck(), BenchRequest(0, "x", 0), timeout=0.05)
    assert record.error and "timed out" in record.error and len(record.arrivals) == 1


def test_requests_per_level_default_and_override():
    assert [bench.requests_for(c, None) for c in (1, 4, 16)] == [8, 8, 32]
    assert bench.requests_for(16, 5) == 5


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert args.concurrency == [1, 4, 8, 16] and args.num_threads == 1 and args.address is None
    assert args.backend is None and args.dtype is None and args.plot is None
    assert build_parser().parse_args(["--concurrency", "2,8"]).concurrency == [2, 8]


# --- the machinery end to end, tiny --------------------------------------------------------


@pytest.fixture
async def monolith(tiny_model_dir):
    monolith = await bench.load_monolith(tiny_model_dir, "cpu", num_threads=1)
    yield monolith
    await monolith.close()


async def test_split_and_monolith_on_the_same_requests(tiny_model_dir, monolith):
    async with running_stack(tiny_model_dir) as stack:
        split = GatewayTarget(stack.address)
        try:
            levels = await run_bench({"split": split, "monolith": MonolithTarget(monolith)}, [1, 2], ["Hi."],
                                     requests=2, warmup=1)
        finally:
            await split.close()
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        for name in ("split", "monolith"):
            stats = level[name]
            assert stats.errors == 0 and stats.requests == 2, stats.first_errors
            assert stats.chunks >= 2 and stats.audio_seconds > 0 and not math.isnan(stats.overhead_mean)
        # Same requests, same seeds, same model: both systems make the same amount of audio.
        assert level["split"].audio_seconds == pytest.approx(level["monolith"].audio_seconds)
        assert set(level["split_over_monolith"]) == {"throughput", "ttfa_p50", "ttfa_p99", "overhead_delta_seconds"}
    table = bench_report.format_table(levels)
    assert "split/mono" in table and "monolith" in table
    json.dumps(bench_report.jsonable({"levels": levels}))


def test_cli_runs_the_monolith_alone_and_writes_json(tiny_model_dir, tmp_path, monkeypatch, capsys):
    for name in bench.THREAD_ENV:  # main() sets these for itself; restored afterwards
        monkeypatch.setenv(name, "1")
    out = tmp_path / "bench.json"
    bench.main(["--model-dir", str(tiny_model_dir), "--only", "monolith", "--concurrency", "1",
                "--requests", "1", "--warmup", "0", "--text", "Hi.", "--json", str(out)])
    result = json.loads(out.read_text())
    (level,) = result["levels"]
    assert level["monolith"]["requests"] == 1 and level["monolith"]["errors"] == 0
    assert "split" not in level and result["config"]["num_threads"] == 1
    assert result["config"]["load"]["before"]["nproc"] >= 1
    assert "monolith" in capsys.readouterr().out
