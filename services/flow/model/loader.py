"""Build the flow from a model directory's yaml and strictly load the official flow.pt."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from services.common.modeldir.checkpoint import load_strict, read_state_dict
from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import FLOW_CHECKPOINT, ModelDir, ModelDirError
from services.flow.model.config import FlowConfig, FlowConfigError
from services.flow.model.flow import CausalMaskedDiffWithXvec


def _build_causal_masked_diff_with_xvec(node: Tagged) -> nn.Module:
    return CausalMaskedDiffWithXvec(FlowConfig.from_node(node))


# The yaml's flow class name → builder. CosyVoice 3 adds "CausalMaskedDiffWithDiT" here.
FLOW_BUILDERS: dict[str, Callable[[Tagged], nn.Module]] = {
    "CausalMaskedDiffWithXvec": _build_causal_masked_diff_with_xvec,
}


def build_flow(model_dir: ModelDir, *, generator: torch.Generator | None = None) -> nn.Module:
    """The flow with random weights, in eval mode.

    With `generator`, every parameter is redrawn from it (same model for the same seed, the
    global RNG untouched), e.g. for `make-tiny-model`; otherwise torch's default init.
    """
    node = model_dir.stage_config("flow")
    builder = FLOW_BUILDERS.get(node.class_name)
    if builder is None:
        raise ModelDirError(
            f"{model_dir.generation.yaml_name}: flow class {node.target} is not supported "
            f"(supported: {', '.join(sorted(FLOW_BUILDERS))})"
        )
    try:
        flow = builder(node)
    except FlowConfigError as exc:
        raise ModelDirError(f"{model_dir.path(model_dir.generation.yaml_name)}: {exc}") from exc
    if generator is not None:
        randomize_parameters(flow, generator)
    return flow.eval()


@torch.no_grad()
def randomize_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Fan-in scaled normal weights, small biases, LayerNorm near identity: outputs stay finite
    and non-trivial through all the flow's layers."""
    for name, param in module.named_parameters():
        if param.dim() >= 2 and not name.endswith(("pos_bias_u", "pos_bias_v")):
            fan_in = param[0].numel()
            values = torch.randn(param.shape, generator=generator) / fan_in**0.5
        elif name.endswith(".weight") and param.dim() == 1:  # LayerNorm gains
            values = 1.0 + 0.1 * torch.randn(param.shape, generator=generator)
        else:
            values = 0.02 * torch.randn(param.shape, generator=generator)
        param.copy_(values.to(param.dtype))


def load_flow(
    model_dir: ModelDir, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """build_flow + strict load of `flow.pt` (every key used, none missing, shapes equal)."""
    flow = build_flow(model_dir)
    path = model_dir.path(FLOW_CHECKPOINT)
    load_strict(flow, read_state_dict(path), str(path))
    return flow.to(device=device, dtype=dtype).eval()


def official_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """What the official flow.pt holds for this module: its state dict, detached, on CPU. Our
    keys already are the official ones (the fixed noise is a non-persistent buffer)."""
    return {key: value.detach().to("cpu").clone() for key, value in module.state_dict().items()}
