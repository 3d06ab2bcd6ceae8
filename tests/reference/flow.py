"""The reference CosyVoice 2 flow (`CausalMaskedDiffWithXvec`) built from a parsed yaml, as an oracle.

The yaml's `flow:` node is instantiated the way HyperPyYAML would (`!new:` = call the class
with the node's arguments), but only for that subtree and only with reference classes, so the
test oracle has exactly the hyperparameters our loader reads.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from services.common.modeldir.hyperyaml import Tagged, load_hyperyaml
from tests.reference import ref

_ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = _ROOT / "services" / "tinymodel" / "cosyvoice2_tiny.yaml"
OFFICIAL_YAML = _ROOT.parent / "shared" / "reference" / "official-configs" / "cosyvoice2.yaml"


def _instantiate(node: Any) -> Any:
    if isinstance(node, Tagged):
        if node.kind != "new":
            raise ValueError(f"the flow subtree should hold only !new: nodes, not !{node.kind}:{node.target}")
        module_name, _, class_name = node.target.rpartition(".")
        is_reference = module_name.startswith(("cosyvoice", "matcha"))
        module = ref(module_name) if is_reference else importlib.import_module(module_name)
        args = [_instantiate(value) for value in node.args]
        kwargs = {key: _instantiate(value) for key, value in node.kwargs.items()}
        return getattr(module, class_name)(*args, **kwargs)
    if isinstance(node, dict):
        return {key: _instantiate(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_instantiate(value) for value in node]
    return node


def build_reference_flow(flow_node: Tagged, seed: int = 0, perturb: float = 0.05) -> nn.Module:
    """The reference flow in eval mode, with random weights that exercise every parameter.

    The reference initialises biases, LayerNorm affines and (via kaiming) little else to
    interesting values, so a bias or norm-parameter mix-up would go unnoticed; `perturb` adds
    seeded noise of that std to every parameter. The global RNGs are restored afterwards
    because the reference CFM reseeds them (`set_all_random_seed(0)`) when it is built.
    """
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    try:
        torch.manual_seed(seed)
        flow = _instantiate(flow_node)
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(py_state)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * perturb)
    return flow.eval()


def load_flow_node(yaml_path: Path = TINY_YAML) -> Tagged:
    node = load_hyperyaml(yaml_path)["flow"]
    if not isinstance(node, Tagged):
        raise ValueError(f"{yaml_path}: 'flow' is not a !new: node")
    return node

