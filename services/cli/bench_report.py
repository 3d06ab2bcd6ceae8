"""`cosyvoice bench` accounting and report: pure functions of client-side arrival times."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

SYSTEMS = ("split", "monolith")
TARGET_THROUGHPUT_RATIO = 0.9  # split ≥ 0.9 × monolith audio-s/s
TARGET_OVERHEAD_SECONDS = 0.015  # split first-audio overhead ≤ 15 ms


@dataclass
class RequestRecord:
    """One request as the client saw it; times are `time.perf_counter()` seconds."""

    submitted: float
    finished: float = math.nan
    arrivals: list[float] = field(default_factory=list)  # chunks with audio only
    seconds: list[float] = field(default_factory=list)  # their audio duration
    stages: tuple[float, float, float] | None = None  # the first chunk's llm, flow, vocoder seconds
    error: str | None = None

    @property
    def stage_seconds(self) -> float | None:
        return sum(self.stages) if self.stages is not None else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.arrivals)

    @property
    def ttfa(self) -> float:
        return self.arrivals[0] - self.submitted if self.arrivals else math.nan

    @property
    def audio_seconds(self) -> float:
        return sum(self.seconds)

    @property
    def overhead(self) -> float:
        return self.ttfa - self.stage_seconds if self.stage_seconds is not None else math.nan

    @property
    def underruns(self) -> int:
        return count_underruns(self.arrivals, self.seconds)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def count_underruns(arrivals: Sequence[float], seconds: Sequence[float]) -> int:
    """Chunks arriving after the playback of all audio received before them has ended.

    Playback starts when the first chunk arrives and plays the chunks back to back; a chunk
    that arrives late is an underrun, and playback resumes at its arrival."""
    underruns = 0
    playing_until: float | None = None
    for arrival, duration in zip(arrivals, seconds, strict=True):
        if playing_until is not None and arrival > playing_until:
            underruns += 1
        playing_until = duration + (arrival if playing_until is None else max(arrival, playing_until))
    return underruns


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class LevelStats:
    system: str
    concurrency: int
    requests: int
    errors: int
    wall_seconds: float
    audio_seconds: float
    throughput: float  # audio seconds per wall second, all requests together
    ttfa_p50: float
    ttfa_p99: float
    ttfa_mean: float
    chunks: int
    underruns: int  # late chunks, all requests
    underrun_requests: int  # requests with at least one
    overhead_mean: float  # client TTFA − sum of the first chunk's stage timings
    overhead_p50: float
    stage_first_chunk_mean: float  # that sum
    first_chunk_llm_mean: float  # and its parts
    first_chunk_flow_mean: float
    first_chunk_vocoder_mean: float
    first_errors: list[str] = field(default_factory=list)


def summarize(system: str, concurrency: int, records: Sequence[RequestRecord], wall_seconds: float) -> LevelStats:
    done = [r for r in records if r.ok]
    ttfas = [r.ttfa for r in done]
    overheads = [r.overhead for r in done if r.stage_seconds is not None]
    stages = [r.stages for r in done if r.stages is not None]
    audio = sum(r.audio_seconds for r in done)
    errors = [r.error or "no audio" for r in records if not r.ok]
    return LevelStats(
        system=system,
        concurrency=concurrency,
        requests=len(records),
        errors=len(errors),
        wall_seconds=wall_seconds,
        audio_seconds=audio,
        throughput=audio / wall_seconds if wall_seconds > 0 else math.nan,
        ttfa_p50=percentile(ttfas, 50),
        ttfa_p99=percentile(ttfas, 99),
        ttfa_mean=_mean(ttfas),
        chunks=sum(len(r.arrivals) for r in done),
        underruns=sum(r.underruns for r in done),
        underrun_requests=sum(1 for r in done if r.underruns),
        overhead_mean=_mean(overheads),
        overhead_p50=percentile(overheads, 50),
        stage_first_chunk_mean=_mean([sum(s) for s in stages]),
        first_chunk_llm_mean=_mean([s[0] for s in stages]),
        first_chunk_flow_mean=_mean([s[1] for s in stages]),
        first_chunk_vocoder_mean=_mean([s[2] for s in stages]),
        first_errors=sorted(set(errors))[:3],
    )


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def compare(split: LevelStats, monolith: LevelStats) -> dict[str, float]:
    return {
        "throughput": ratio(split.throughput, monolith.throughput),
        "ttfa_p50": ratio(split.ttfa_p50, monolith.ttfa_p50),
        "ttfa_p99": ratio(split.ttfa_p99, monolith.ttfa_p99),
        "overhead_delta_seconds": split.overhead_mean - monolith.overhead_mean,
    }


# ---------------------------------------------------------------------------------------------
# Report.


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _x(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}×"


def format_table(levels: Sequence[dict[str, Any]]) -> str:
    header = (f"{'C':>3}  {'system':<11}{'req':>4}{'err':>4}  {'TTFA p50':>10}  {'TTFA p99':>10}  "
              f"{'audio-s/s':>9}  {'underruns':>14}  {'overhead':>9}  {'stages 1st':>10}")
    lines = [header, "-" * len(header)]
    for level in levels:
        for name in SYSTEMS:
            s: LevelStats | None = level.get(name)
            if s is None:
                continue
            underruns = f"{s.underruns}/{s.chunks} ({s.underrun_requests}r)"
            lines.append(
                f"{s.concurrency:>3}  {name:<11}{s.requests:>4}{s.errors:>4}  {_ms(s.ttfa_p50):>10}  "
                f"{_ms(s.ttfa_p99):>10}  {s.throughput:>9.2f}  {underruns:>14}  {_ms(s.overhead_mean):>9}  "
                f"{_ms(s.stage_first_chunk_mean):>10}"
            )
            for error in s.first_errors:
                lines.append(f"{'':>5}error: {error}")
        r = level.get("split_over_monolith")
        if r is not None:
            delta = r["overhead_delta_seconds"]
            lines.append(
                f"{level['concurrency']:>3}  {'split/mono':<11}{'':>8}  {_x(r['ttfa_p50']):>10}  "
                f"{_x(r['ttfa_p99']):>10}  {_x(r['throughput']):>9}  {'':>14}  "
                f"{'—' if math.isnan(delta) else f'{delta * 1000:+.1f} ms':>9}"
            )
        lines.append("")
    return "\n".join(lines)


def check_targets(levels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets per level: split throughput ≥ 0.9 × monolith; split overhead ≤ 15 ms."""
    results = []
    for level in levels:
        c = level["concurrency"]
        if "split_over_monolith" in level:
            value = level["split_over_monolith"]["throughput"]
            results.append({"concurrency": c, "target": f"split throughput ≥ {TARGET_THROUGHPUT_RATIO}× monolith",
                            "value": value, "met": value >= TARGET_THROUGHPUT_RATIO})
        if "split" in level:
            value = level["split"].overhead_mean
            results.append({"concurrency": c, "target": f"split first-audio overhead ≤ {TARGET_OVERHEAD_SECONDS * 1000:.0f} ms",
                            "value": value, "met": value <= TARGET_OVERHEAD_SECONDS})
    return results


def format_targets(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        shown = _x(r["value"]) if "throughput" in r["target"] else _ms(r["value"])
        lines.append(f"  C={r['concurrency']:<3} {r['target']:<42} {shown:>10}  {'met' if r['met'] else 'MISSED'}")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, LevelStats):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
