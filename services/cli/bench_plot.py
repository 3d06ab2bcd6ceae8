"""`cosyvoice bench --plot DIR`: PNG charts of a bench run (matplotlib, Agg: no display needed).

End to end (`cosyvoice bench`):
- first-audio-vs-concurrency.png: TTFA p50 (solid) and p99 (dashed) per variant and system;
- throughput-vs-concurrency.png: audio-s/s per variant and system.
Per stage (`cosyvoice bench stages`):
- stage-scaling-vs-concurrency.png: each stage's throughput as a multiple of its first level's,
  one panel per stage, one line per variant, and the linear ideal (ratio = C) for reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from services.cli.bench_report import SYSTEMS

DPI = 90  # with a 7 × 4.2 in figure: about 630 × 380 px, tens of kB per PNG


def _pyplot():  # noqa: ANN202 - matplotlib imported lazily, only for --plot
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: a headless server has no display
    import matplotlib.pyplot as plt

    return plt


def _label(variant: str, system: str, runs: Sequence[dict[str, Any]]) -> str:
    return system if len(runs) == 1 else f"{variant} {system}"


def _values(run: dict[str, Any], system: str, attribute: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for level in run["levels"]:
        stats = level.get(system)
        if stats is not None and not math.isnan(getattr(stats, attribute)):
            xs.append(level["concurrency"])
            ys.append(getattr(stats, attribute))
    return xs, ys


def _log_x(ax, concurrencies: Sequence[int]) -> None:  # noqa: ANN001
    """A log2 axis labelled with the levels themselves (1, 4, 8, 16), not powers of two."""
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    if concurrencies:
        ax.set_xticks(sorted(set(concurrencies)), [str(c) for c in sorted(set(concurrencies))])


def _finish(plt, fig, ax, path: Path, title: str, ylabel: str, concurrencies: Sequence[int]) -> Path:  # noqa: ANN001
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("concurrent requests (C)")
    ax.set_ylabel(ylabel)
    _log_x(ax, concurrencies)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_e2e(runs: Sequence[dict[str, Any]], directory: Path, subtitle: str = "") -> list[Path]:
    """The two end-to-end charts; `runs` are bench runs ({"variant", "levels"}) of one command."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    levels = [level["concurrency"] for run in runs for level in run["levels"]]
    suffix = f"\n{subtitle}" if subtitle else ""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, run in enumerate(runs):
        for system in SYSTEMS:
            color = f"C{(index * len(SYSTEMS) + SYSTEMS.index(system)) % 10}"
            for attribute, style, name in (("ttfa_p50", "-o", "p50"), ("ttfa_p99", "--x", "p99")):
                xs, ys = _values(run, system, attribute)
                if xs:
                    ax.plot(xs, [y * 1000 for y in ys], style, color=color,
                            label=f"{_label(run['variant'], system, runs)} {name}")
    first = _finish(plt, fig, ax, directory / "first-audio-vs-concurrency.png",
                    f"Time to first audio{suffix}", "first audio (ms)", levels)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, run in enumerate(runs):
        for system in SYSTEMS:
            xs, ys = _values(run, system, "throughput")
            if xs:
                ax.plot(xs, ys, "-o", color=f"C{(index * len(SYSTEMS) + SYSTEMS.index(system)) % 10}",
                        label=_label(run["variant"], system, runs))
    second = _finish(plt, fig, ax, directory / "throughput-vs-concurrency.png",
                     f"Aggregate throughput{suffix}", "audio seconds per second", levels)
    return [first, second]


def plot_stages(runs: Sequence[dict[str, Any]], directory: Path, subtitle: str = "") -> list[Path]:
    """One panel per stage: throughput ÷ the first level's, per variant; `runs` carry "stages"."""
    from services.cli.bench_stages import STAGE_UNITS

    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGE_UNITS if any(s in run["stages"] for run in runs)]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        concurrencies: list[int] = []
        for index, run in enumerate(runs):
            levels = run["stages"].get(stage, [])
            xs = [level.concurrency for level in levels if not math.isnan(level.ratio)]
            ys = [level.ratio for level in levels if not math.isnan(level.ratio)]
            concurrencies = sorted(set(concurrencies) | set(xs))
            if xs:
                ax.plot(xs, ys, "-o", color=f"C{index % 10}", label=run["variant"])
        if concurrencies:
            ax.plot(concurrencies, [c / concurrencies[0] for c in concurrencies], ":", color="grey",
                    label="linear")
        ax.set_title(f"{stage} ({STAGE_UNITS[stage]})", fontsize=9)
        ax.set_xlabel("concurrent streams (C)")
        _log_x(ax, concurrencies)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("throughput ÷ first level's")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    path = directory / "stage-scaling-vs-concurrency.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]
