"""`cosyvoice bench --backend A,B --dtype X,Y`: the same bench once per variant, side by side.

A variant is one backend and one dtype. It is applied the way an operator would: as the
stages' environment variables (COSYVOICE_{FLOW,VOCODER}_BACKEND, COSYVOICE_{LLM,FLOW,VOCODER}_DTYPE),
set for the stage processes the bench starts and, while that variant runs, for this process
(the monolith reads the same variables). Every variant is validated with the stages' own
config checks before anything starts, so a bad name is one line, not a stack that dies
loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from services.cli.bench_report import SYSTEMS, LevelStats

BACKEND_STAGES = ("flow", "vocoder")  # the stages with a swappable compute backend
DTYPE_STAGES = ("llm", "flow", "vocoder")


class VariantError(ValueError):
    """A --backend or --dtype value the stages would refuse; one line naming it."""


def _config_types() -> dict[str, type]:
    from services.flow.config import FlowServiceConfig
    from services.llm.config import LLMServiceConfig
    from services.vocoder.config import VocoderServiceConfig

    return {"llm": LLMServiceConfig, "flow": FlowServiceConfig, "vocoder": VocoderServiceConfig}


@dataclass(frozen=True)
class Variant:
    backend: str | None = None  # None: each stage's own setting
    dtype: str | None = None

    @property
    def name(self) -> str:
        parts = [p for p in (self.backend, self.dtype) if p]
        return "/".join(parts) if parts else "default"

    def env(self) -> dict[str, str]:
        types = _config_types()
        values: dict[str, str] = {}
        if self.backend:
            for stage in BACKEND_STAGES:
                if "backend" in {f.name for f in dataclasses.fields(types[stage])}:
                    values[f"{types[stage].ENV_PREFIX}BACKEND"] = self.backend
        if self.dtype:
            for stage in DTYPE_STAGES:
                values[f"{types[stage].ENV_PREFIX}DTYPE"] = self.dtype
        return values


def make_variants(backends: Sequence[str] | None, dtypes: Sequence[str] | None) -> list[Variant]:
    """Every backend × dtype, in the order given (the first is the baseline of the ratios)."""
    return [Variant(b, d) for b, d in itertools.product(backends or [None], dtypes or [None])]


def validate_variants(variants: Sequence[Variant], device: str) -> None:
    """Raise VariantError if any stage's config would refuse a variant."""
    from services.common.config import ConfigError, load_config

    types = _config_types()
    if any(v.backend for v in variants) and not any(
        "backend" in {f.name for f in dataclasses.fields(types[s])} for s in BACKEND_STAGES
    ):
        raise VariantError("--backend: this build's flow and vocoder stages have no backend setting")
    for variant in variants:
        environ = variant.env()
        for stage, config_type in types.items():
            try:
                load_config(config_type, ["--model-dir", ".", "--device", device], environ)
            except ConfigError as error:
                raise VariantError(f"variant {variant.name}: {stage}: {error}") from None


@contextlib.contextmanager
def applied(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ for the block (the in-process monolith reads it), then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parse_list(text: str, what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise VariantError(f"--{what}: expected a comma-separated list, got {text!r}")
    if len(set(values)) != len(values):
        raise VariantError(f"--{what}: {text!r} names a value twice")
    return values


# ---------------------------------------------------------------------------------------------
# The comparison table: each variant's numbers and its ratio to the first variant's.


def _ratio(value: float, base: float) -> float:
    return value / base if base and not math.isnan(base) and not math.isnan(value) else math.nan


def _cell(value: float, spec: str, suffix: str = "") -> str:
    return "—" if math.isnan(value) else format(value, spec) + suffix


def compare_e2e(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant × level × system, with ratios to the first variant's same cell."""
    base = runs[0]
    rows = []
    for run in runs:
        for level, base_level in zip(run["levels"], base["levels"]):
            for system in SYSTEMS:
                s: LevelStats | None = level.get(system)
                b: LevelStats | None = base_level.get(system)
                if s is None or b is None:
                    continue
                rows.append({
                    "variant": run["variant"], "concurrency": level["concurrency"], "system": system,
                    "ttfa_p50": s.ttfa_p50, "ttfa_p99": s.ttfa_p99, "throughput": s.throughput,
                    "ttfa_p50_ratio": _ratio(s.ttfa_p50, b.ttfa_p50),
                    "ttfa_p99_ratio": _ratio(s.ttfa_p99, b.ttfa_p99),
                    "throughput_ratio": _ratio(s.throughput, b.throughput),
                })
    return rows


def format_e2e_comparison(rows: Sequence[dict[str, Any]]) -> str:
    width = max([len("variant")] + [len(r["variant"]) for r in rows])
    header = (f"{'variant':<{width}}{'C':>4}  {'system':<9}{'audio-s/s':>10}{'×':>7}  {'TTFA p50':>10}{'×':>7}"
              f"  {'TTFA p99':>10}{'×':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['variant']:<{width}}{r['concurrency']:>4}  {r['system']:<9}{_cell(r['throughput'], '.2f'):>10}"
            f"{_cell(r['throughput_ratio'], '.2f', '×'):>7}  {_cell(r['ttfa_p50'] * 1000, '.1f', ' ms'):>10}"
            f"{_cell(r['ttfa_p50_ratio'], '.2f', '×'):>7}  {_cell(r['ttfa_p99'] * 1000, '.1f', ' ms'):>10}"
            f"{_cell(r['ttfa_p99_ratio'], '.2f', '×'):>7}"
        )
    return "\n".join(lines)


def compare_stages(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant × stage × level: throughput, its ratio to C=1 and to the first variant."""
    base = runs[0]["stages"]
    rows = []
    for run in runs:
        for stage, levels in run["stages"].items():
            for level, base_level in zip(levels, base.get(stage, [])):
                rows.append({
                    "variant": run["variant"], "stage": stage, "concurrency": level.concurrency,
                    "throughput": level.throughput, "ratio_to_first_level": level.ratio,
                    "ratio_to_first_variant": _ratio(level.throughput, base_level.throughput),
                })
    return rows


def format_stage_comparison(rows: Sequence[dict[str, Any]]) -> str:
    from services.cli.bench_stages import STAGE_UNITS

    width = max([len("variant")] + [len(r["variant"]) for r in rows])
    header = f"{'variant':<{width}}  {'stage':<8}{'C':>4}  {'throughput':>11}  {'unit':<13}{'× 1st C':>8}{'× 1st var':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['variant']:<{width}}  {r['stage']:<8}{r['concurrency']:>4}  {_cell(r['throughput'], '.1f'):>11}  "
            f"{STAGE_UNITS[r['stage']]:<13}{_cell(r['ratio_to_first_level'], '.2f', '×'):>8}"
            f"{_cell(r['ratio_to_first_variant'], '.2f', '×'):>10}"
        )
    return "\n".join(lines)
