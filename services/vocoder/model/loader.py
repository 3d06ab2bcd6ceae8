"""Build the HiFT vocoder from a model directory's yaml and load the official `hift.pt`.

The builder table is keyed by the yaml's class names, so CosyVoice 3's `CausalHiFTGenerator`
(with `CausalConvRNNF0Predictor`) is added as table entries, not a new loader.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from services.common.modeldir.checkpoint import (
    fold_weight_norm,
    load_strict,
    read_state_dict,
    strip_substring,
)
from services.common.modeldir.layout import HIFT_CHECKPOINT, ModelDir
from services.vocoder.model.config import (
    F0PredictorConfig,
    HiFTConfig,
    HiFTConfigError,
    parse_hift_config,
)
from services.vocoder.model.hift import ConvRNNF0Predictor, HiFTGenerator
from services.vocoder.model.layers import WEIGHT_NORM_DIM, weight_norm_prefixes

F0_PREDICTORS: dict[str, Callable[[F0PredictorConfig], nn.Module]] = {
    "ConvRNNF0Predictor": ConvRNNF0Predictor,
}
GENERATORS: dict[str, Callable[[HiFTConfig, nn.Module], nn.Module]] = {
    "HiFTGenerator": HiFTGenerator,
}
# The reference loader removes every occurrence, so HiFiGan-wrapper checkpoints load too.
_WRAPPER_SUBSTRING = "generator."
OFFICIAL_G_SUFFIX = "parametrizations.weight.original0"
OFFICIAL_V_SUFFIX = "parametrizations.weight.original1"


def build_hift_from_config(config: HiFTConfig) -> nn.Module:
    f0_builder = F0_PREDICTORS.get(config.f0_predictor.class_name)
    if f0_builder is None:
        raise HiFTConfigError(
            f"hift.f0_predictor: class {config.f0_predictor.class_name} is not supported "
            f"(supported: {', '.join(F0_PREDICTORS)})"
        )
    generator_builder = GENERATORS.get(config.class_name)
    if generator_builder is None:
        raise HiFTConfigError(
            f"hift: class {config.class_name} is not supported (supported: {', '.join(GENERATORS)})"
        )
    return generator_builder(config, f0_builder(config.f0_predictor))


def build_hift(model_dir: ModelDir) -> nn.Module:
    """A randomly initialised vocoder shaped by the yaml's `hift` node, in eval mode."""
    node = model_dir.stage_config("hift")
    if node.class_name not in GENERATORS:  # before parsing: another class may take other keys
        raise HiFTConfigError(
            f"{model_dir.generation.yaml_name}: hift class {node.class_name} is not supported "
            f"(supported: {', '.join(GENERATORS)})"
        )
    return build_hift_from_config(parse_hift_config(node)).eval()


def load_hift_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load of an official state dict (either weight-norm key style, any `generator.`)."""
    state = strip_substring(state, _WRAPPER_SUBSTRING)
    state = fold_weight_norm(state, weight_norm_prefixes(module), source, dim=WEIGHT_NORM_DIM)
    load_strict(module, state, source)


def load_hift(
    model_dir: ModelDir,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build from the yaml, strictly load `hift.pt`, move to device/dtype, eval mode."""
    module = build_hift(model_dir)
    path = model_dir.require(HIFT_CHECKPOINT)
    load_hift_state(module, read_state_dict(path), str(path))
    return module.to(device=device, dtype=dtype).eval()


def official_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights in the official `hift.pt` key format, on CPU.

    Weight-normed layers become `parametrizations.weight.original0/1` (g, v), which the
    reference `HiFTGenerator.load_state_dict(strict=True)` accepts.
    """
    state = {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    return unfold_weight_norm(state, weight_norm_prefixes(module))


def weight_norm_g(weight: torch.Tensor, dim: int = WEIGHT_NORM_DIM) -> torch.Tensor:
    """The L2 norm over all axes but `dim`, shaped to broadcast like torch's original0."""
    axes = [axis for axis in range(weight.dim()) if axis != dim]
    return torch.linalg.vector_norm(weight, ord=2, dim=axes, keepdim=True)


def unfold_weight_norm(
    state: Mapping[str, torch.Tensor], prefixes: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Replace `<p>.weight` by the official `<p>.parametrizations.weight.original0/1` pair.

    original1 (v) is the weight itself and original0 (g) its norm, so g · v / ‖v‖ gives the
    weight back up to rounding.
    """
    wanted = {f"{prefix}.weight": prefix for prefix in prefixes}
    official: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = wanted.get(key)
        if prefix is None:
            official[key] = value
            continue
        official[f"{prefix}.{OFFICIAL_G_SUFFIX}"] = weight_norm_g(value)
        official[f"{prefix}.{OFFICIAL_V_SUFFIX}"] = value
    return official
