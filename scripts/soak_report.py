"""What scripts/soak.py counts and how it judges the run: request tallies, time-to-first-audio
percentiles, and each process's RSS at the end of the warm-up, at the end, min, max and
growth. Growth is judged idle to idle when the soak paused for it (`idle_growth_pct`: RSS with
no request in flight after the warm-up and at the end), else by the floors under load
(`growth_pct`, see `memory`), which is always reported. Pure functions on the samples, so the
judgement is tested without a stack."""

from __future__ import annotations

import math
import threading
from typing import Any


class Tally:
    """Counters the streams update from their threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.cut_off_at_end = 0
        self.errors: dict[str, dict[str, Any]] = {}  # code -> {"count", "first_message"}
        self.first_audio_seconds: list[float] = []
        self.audio_seconds = 0.0

    def succeeded(self, first_audio: float | None, audio_seconds: float) -> None:
        with self._lock:
            self.ok += 1
            self.audio_seconds += audio_seconds
            if first_audio is not None:
                self.first_audio_seconds.append(first_audio)

    def failed(self, code: str, message: str) -> None:
        with self._lock:
            entry = self.errors.setdefault(code, {"count": 0, "first_message": message})
            entry["count"] += 1

    def cut_off(self) -> None:
        with self._lock:
            self.cut_off_at_end += 1

    @property
    def error_count(self) -> int:
        return sum(entry["count"] for entry in self.errors.values())

    def progress(self) -> str:
        with self._lock:
            return f"{self.ok} ok, {self.error_count} failed, {self.audio_seconds:.0f} s of audio"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


WINDOW = 0.2  # of the samples after the warm-up: the first and the last fifth (at least 3) are compared


def memory(samples: list[dict], warmup_seconds: float) -> dict[str, dict[str, Any]]:
    """Per process: RSS at the first sample at or after the warm-up, at the last sample, min
    and max after the warm-up, and growth: the lowest RSS in the last fifth of the samples after
    the warm-up against the lowest in the first fifth, in %. Floors, not single samples: a stage
    under load swings by hundreds of MB as requests come and go (the flow stage's RSS is a saw
    tooth), which would make a point-to-point growth a coin toss; a leak lifts the floor.
    `exited` when a sample found the process gone."""
    names = list(dict.fromkeys(name for sample in samples for name in sample["rss"]))  # as watched
    baseline_at = next((i for i, s in enumerate(samples) if s["t"] >= warmup_seconds), len(samples) - 1)
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        series = [sample["rss"].get(name) for sample in samples]
        after = [value for value in series[baseline_at:] if value is not None]
        window = min(len(after), max(3, round(len(after) * WINDOW)))  # one sample could be a peak
        first_floor, last_floor = (min(after[:window]), min(after[-window:])) if after else (None, None)
        found[name] = {
            "warm_rss": series[baseline_at],
            "end_rss": series[-1],
            "min_rss": min(after) if after else None,
            "max_rss": max(after) if after else None,
            "first_floor_rss": first_floor,
            "last_floor_rss": last_floor,
            "growth_pct": (last_floor - first_floor) / first_floor * 100 if first_floor and last_floor else None,
            "exited": any(value is None for value in series),
        }
    return found


def add_idle(processes: dict[str, dict[str, Any]], idle: dict[str, dict[str, int | None]]) -> None:
    """Idle RSS after the warm-up and at the end, and its growth in %, into each process's stats.
    Under load a stage's RSS is mostly what its open streams hold (the flow's incremental caches
    alone swing by hundreds of MB), so even floors compare different loads; idle compares alike."""
    for name, stats in processes.items():
        warm, end = idle["after_warmup"].get(name), idle["end"].get(name)
        stats["idle_warm_rss"], stats["idle_end_rss"] = warm, end
        stats["idle_growth_pct"] = (end - warm) / warm * 100 if warm and end else None
        stats["exited"] = stats["exited"] or end is None


def summarize(tally: Tally, samples: list[dict], warmup_seconds: float, max_growth_pct: float,
              idle: dict[str, dict[str, int | None]] | None = None) -> dict[str, Any]:
    processes = memory(samples, warmup_seconds) if samples else {}
    if idle is not None:
        add_idle(processes, idle)
    judged = "idle_growth_pct" if idle is not None else "growth_pct"
    failures = []
    if tally.error_count:
        failures.append(f"{tally.error_count} requests failed")
    for name, stats in processes.items():
        if stats["exited"]:
            failures.append(f"{name} went away during the soak")
        elif stats[judged] is not None and stats[judged] > max_growth_pct:
            what = "idle RSS" if idle is not None else "RSS floor"
            failures.append(f"{name} {what} grew {stats[judged]:.1f} % after the warm-up (limit {max_growth_pct:g} %)")
    if not tally.ok:
        failures.append("no request succeeded")
    duration = samples[-1]["t"] if samples else 0.0
    return {
        "passed": not failures,
        "failures": failures,
        "requests": {"ok": tally.ok, "failed": tally.error_count, "cut_off_at_end": tally.cut_off_at_end},
        "errors": tally.errors,
        "audio_seconds": tally.audio_seconds,
        "audio_seconds_per_second": tally.audio_seconds / duration if duration else None,
        "time_to_first_audio_seconds": {"p50": percentile(tally.first_audio_seconds, 0.5),
                                        "p95": percentile(tally.first_audio_seconds, 0.95)},
        "duration_seconds": duration,
        "warmup_seconds": warmup_seconds,
        "growth_judged": judged,
        "processes": processes,
        "samples": samples,
    }


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def format_report(result: dict[str, Any]) -> str:
    requests, ttfa = result["requests"], result["time_to_first_audio_seconds"]
    rate = result["audio_seconds_per_second"]
    lines = [
        f"duration {result['duration_seconds'] / 60:.2f} min (warm-up {result['warmup_seconds'] / 60:.2f} min), "
        f"{len(result['samples'])} RSS samples",
        f"requests: {requests['ok']} ok, {requests['failed']} failed, {requests['cut_off_at_end']} cut off at the end",
        f"audio: {result['audio_seconds']:.1f} s" + (f" ({rate:.2f} audio-s per s)" if rate else ""),
        "time to first audio: " + (f"p50 {ttfa['p50']:.3f} s, p95 {ttfa['p95']:.3f} s" if ttfa["p50"] is not None
                                   else "no audio"),
    ]
    for code, entry in sorted(result["errors"].items()):
        lines.append(f"  {code}: {entry['count']} (first: {entry['first_message']})")
    idle = result.get("growth_judged") == "idle_growth_pct"
    lines.append(f"{'RSS (MB)':<10}{'warm-up end':>12}{'end':>9}{'min':>9}{'max':>9}"
                 f"{'floor first':>13}{'floor last':>12}{'growth':>10}"
                 + (f"{'idle warm':>11}{'idle end':>10}{'idle growth':>13}" if idle else ""))
    for name, stats in result["processes"].items():
        line = (f"{name:<10}{_mb(stats['warm_rss']):>12}{_mb(stats['end_rss']):>9}{_mb(stats['min_rss']):>9}"
                f"{_mb(stats['max_rss']):>9}{_mb(stats['first_floor_rss']):>13}{_mb(stats['last_floor_rss']):>12}"
                f"{_pct(stats['growth_pct']):>10}")
        if idle:
            line += f"{_mb(stats['idle_warm_rss']):>11}{_mb(stats['idle_end_rss']):>10}{_pct(stats['idle_growth_pct']):>13}"
        lines.append(line + ("  (went away)" if stats["exited"] else ""))
    lines.append("growth: the lowest RSS in the last fifth of the samples after the warm-up against the "
                 "lowest in the first fifth")
    if idle:
        lines.append("idle growth (judged): RSS with no request in flight at the end against after the warm-up")
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
    return "\n".join(lines)
