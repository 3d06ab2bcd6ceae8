"""What a `.pt` state dict holds, read without building any module: tensor count, parameter
count, dtypes, and whether chosen keys have the shapes the yaml implies.

`cosyvoice check-model` uses this on directories that may hold gigabytes of weights, so files
are memory-mapped (`torch.load(mmap=True)`): only the tensors we look at are paged in. Files are
always read with `weights_only=True`; a model directory from the internet must not run code.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch


@dataclass(frozen=True)
class ExpectedShape:
    """One key whose shape follows from the config, and the config keys it follows from."""

    key: str
    shape: tuple[int, ...]
    because: str  # e.g. "llm.speech_token_size + 3, llm_input_size"
    # Alternative spellings of the same tensor (weight norm's two styles, a plain weight).
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpectedCount:
    """How many numbered blocks `prefix.{i}.` the file must have, e.g. the Qwen layers."""

    prefix: str
    count: int
    because: str


@dataclass
class ShapeCheck:
    key: str
    expected: list[int]
    found: list[int] | None  # None: the key is not in the file
    because: str
    ok: bool


@dataclass
class CountCheck:
    prefix: str
    expected: int
    found: int
    because: str
    ok: bool


@dataclass
class CheckpointSummary:
    file: str
    stage: str
    size_bytes: int
    tensors: int = 0
    parameters: int = 0  # tied tensors (one storage, same view) are counted once
    dtypes: dict[str, int] = field(default_factory=dict)
    shapes: list[ShapeCheck] = field(default_factory=list)
    counts: list[CountCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class CheckpointReadError(ValueError):
    """A file torch cannot read as a plain state dict; the message is one line."""


def _first_sentence(text: str, limit: int = 160) -> str:
    """torch's messages run to paragraphs; a report line needs the first sentence only."""
    line = " ".join(text.split())
    sentence = line.split(". ", 1)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


def load_state_dict_mmap(path: Path) -> dict[str, torch.Tensor]:
    """A state dict memory-mapped from `path` (files in torch's old format are read whole)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-code files
        raise CheckpointReadError(f"cannot read it ({_first_sentence(str(exc))})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointReadError("it is not a plain state dict of tensors")
    return dict(state)


def count_parameters(state: Mapping[str, torch.Tensor]) -> int:
    """Values in the file, counting a tensor saved twice under two names (tied weights) once."""
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    total = 0
    for tensor in state.values():
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if view not in seen:
            seen.add(view)
            total += tensor.numel()
    return total


def dtype_counts(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    counts = Counter(str(tensor.dtype).removeprefix("torch.") for tensor in state.values())
    return dict(counts.most_common())


def numbered_blocks(keys: list[str], prefix: str) -> int:
    """How many distinct `prefix.{i}.` indices appear among `keys`."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({match.group(1) for key in keys if (match := pattern.match(key))})


def check_shapes(
    state: Mapping[str, torch.Tensor], expected: list[ExpectedShape]
) -> list[ShapeCheck]:
    checks = []
    for item in expected:
        name = next((key for key in (item.key, *item.aliases) if key in state), None)
        found = list(state[name].shape) if name is not None else None
        checks.append(ShapeCheck(name or item.key, list(item.shape), found, item.because, found == list(item.shape)))
    return checks


def check_counts(keys: list[str], expected: list[ExpectedCount]) -> list[CountCheck]:
    checks = []
    for item in expected:
        found = numbered_blocks(keys, item.prefix)
        checks.append(CountCheck(item.prefix, item.count, found, item.because, found == item.count))
    return checks


def summarize_checkpoint(
    path: Path,
    stage: str,
    expected_shapes: list[ExpectedShape] | None,
    expected_counts: list[ExpectedCount] | None,
    key_substring_to_strip: str = "",
) -> CheckpointSummary:
    """Read `path` and compare it with the expectations; None means the config was unreadable
    (then only the inventory is reported). Problems are one line each, naming the file."""
    summary = CheckpointSummary(path.name, stage, path.stat().st_size)
    try:
        state = load_state_dict_mmap(path)
    except CheckpointReadError as exc:
        summary.problems.append(f"{path.name}: {exc}")
        return summary
    if key_substring_to_strip:  # e.g. hift.pt's `generator.`, which the loader strips too
        state = {key.replace(key_substring_to_strip, ""): value for key, value in state.items()}
    summary.tensors = len(state)
    summary.parameters = count_parameters(state)
    summary.dtypes = dtype_counts(state)
    summary.shapes = check_shapes(state, expected_shapes or [])
    summary.counts = check_counts(list(state), expected_counts or [])
    for check in summary.shapes:
        if check.found is None:
            summary.problems.append(f"{path.name}: has no {check.key} (the {stage} needs it)")
        elif not check.ok:
            summary.problems.append(
                f"{path.name}: {check.key} has shape {tuple(check.found)}, the config needs "
                f"{tuple(check.expected)} ({check.because})"
            )
    for count in summary.counts:
        if not count.ok:
            summary.problems.append(
                f"{path.name}: has {count.found} {count.prefix}.* blocks, the config needs "
                f"{count.expected} ({count.because})"
            )
    return summary
