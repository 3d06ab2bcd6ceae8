"""Strict loading of official `.pt` state dicts into our modules.

Strict means: every key of the file is used, none of the module's is missing, and every shape
agrees. Failures name the file, the keys and the shapes, because "size mismatch" with no name
is the most common way a wrong model directory wastes an operator's afternoon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from services.common.modeldir.layout import ModelDirError

_MAX_LISTED = 8


class CheckpointError(ModelDirError):
    """A state dict that does not fit the module built from the yaml."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-code files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a plain state dict of tensors")
    return dict(state)


def strip_substring(state: Mapping[str, torch.Tensor], substring: str) -> dict[str, torch.Tensor]:
    """The reference removes every occurrence of e.g. 'generator.' from HiFT keys."""
    return {key.replace(substring, ""): value for key, value in state.items()}


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" … (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_state_dict(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], source: str
) -> None:
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong = [
        f"{key} has shape {tuple(state[key].shape)}, the config needs {tuple(expected[key])}"
        for key in sorted(expected.keys() & state.keys())
        if tuple(state[key].shape) != tuple(expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:_MAX_LISTED]))
    if problems:
        raise CheckpointError(f"{source} does not match the model config: " + " | ".join(problems))


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Check keys and shapes with a readable error, then copy the weights in."""
    expected = {key: value.shape for key, value in module.state_dict().items()}
    check_state_dict(expected, state, source)
    module.load_state_dict(state, strict=True)


# Weight norm appears in checkpoints in two spellings: torch >= 2.1's parametrizations
# (`<p>.parametrizations.weight.original0/1`) and the legacy hooks (`<p>.weight_g/_v`).
_WN_STYLES = (
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    ("weight_g", "weight_v"),
)


def fold_weight_norm(
    state: Mapping[str, torch.Tensor], prefixes: Iterable[str], source: str, dim: int = 0
) -> dict[str, torch.Tensor]:
    """Replace each weight-normed layer's (g, v) pair by its effective `weight`.

    Our modules keep plain weights so no forward pass recomputes the norm. Each prefix must
    be present in exactly one spelling; the pair's keys are consumed, so strictness holds.
    """
    folded = dict(state)
    for prefix in prefixes:
        found = False
        for g_name, v_name in _WN_STYLES:
            g_key, v_key = f"{prefix}.{g_name}", f"{prefix}.{v_name}"
            if g_key in folded and v_key in folded:
                if found:
                    raise CheckpointError(f"{source}: {prefix} has weight-norm keys in two styles")
                g, v = folded.pop(g_key), folded.pop(v_key)
                folded[f"{prefix}.weight"] = torch._weight_norm(v, g, dim)
                found = True
        if not found and f"{prefix}.weight" not in folded:
            raise CheckpointError(
                f"{source} is missing weight-norm keys {prefix}.parametrizations.weight.original0/1 "
                f"(or {prefix}.weight_g/weight_v)"
            )
    return folded
