"""Shared fixtures: a reference HiFT with the tiny yaml's dimensions and non-trivial weights,
and a model directory holding it as an official `hift.pt`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import HIFT_CHECKPOINT, ModelDir
from tests.reference.hift import TINY_YAML, build_reference_hift, hift_node


@pytest.fixture(autouse=True)
def single_intra_op_thread() -> Iterator[None]:
    """These models are tiny; on a busy 2-core machine two OpenMP threads that wait on each
    other make a 30 ms forward take seconds. Restored afterwards for other test packages."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _perturb(reference: torch.nn.Module, seed: int) -> None:
    """Move the reference off its init so that every parameter kind matters to the output.

    Weight-norm g gets rescaled (so a loader that ignored g would fail), Snake α and biases
    get spread, and the f0 head is set so frames fall on both sides of the 10 Hz voicing
    threshold (an all-unvoiced source would not exercise the sine path).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith("original0"):
                param.mul_(torch.empty_like(param).uniform_(0.5, 2.0, generator=generator))
            elif name.endswith("alpha"):
                param.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05, generator=generator)
        head = reference.f0_predictor.classifier
        head.weight.normal_(0.0, 30.0, generator=generator)
        head.bias.fill_(12.0)


@pytest.fixture(scope="session")
def tiny_node() -> Tagged:
    return hift_node(TINY_YAML)


@pytest.fixture(scope="session")
def reference_hift(tiny_node: Tagged) -> torch.nn.Module:
    torch.manual_seed(1234)
    reference = build_reference_hift(tiny_node)
    _perturb(reference, seed=99)
    return reference


@pytest.fixture()
def make_model_dir(tmp_path: Path) -> Callable[[dict[str, torch.Tensor] | None], ModelDir]:
    """A model directory with the tiny yaml and, if given, that state dict as hift.pt."""

    def make(state: dict[str, torch.Tensor] | None) -> ModelDir:
        root = tmp_path / "model"
        root.mkdir(exist_ok=True)
        shutil.copy(TINY_YAML, root / "cosyvoice2.yaml")
        if state is not None:
            torch.save(state, root / HIFT_CHECKPOINT)
        return ModelDir.open(root)

    return make


@pytest.fixture()
def mel() -> torch.Tensor:
    return torch.randn(1, 80, 24, generator=torch.Generator().manual_seed(5))
