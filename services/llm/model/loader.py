"""Build the LLM from a model directory and strictly load its official `llm.pt`.

The builder is chosen by the yaml's class name (`llm: !new:cosyvoice.llm.llm.Qwen2LM`), so
CosyVoice 3 (`CosyVoice3LM`) is a new entry in `_BUILDERS`, not a new loader.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from services.common.modeldir.checkpoint import load_strict, read_state_dict
from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import LLM_CHECKPOINT, QWEN_DIR, ModelDir, ModelDirError
from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.qwen2 import Qwen2Config


def _int_hparam(node: Tagged, key: str, source: str) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelDirError(f"{source}: llm.{key} must be an integer, got {value!r}")
    return value


def _build_qwen2lm(model_dir: ModelDir) -> CosyVoice2LM:
    source = model_dir.generation.yaml_name
    node = model_dir.stage_config("llm")
    qwen = Qwen2Config.from_dict(model_dir.qwen_config, source=f"{QWEN_DIR}/config.json")
    return CosyVoice2LM(
        qwen,
        llm_input_size=_int_hparam(node, "llm_input_size", source),
        llm_output_size=_int_hparam(node, "llm_output_size", source),
        speech_token_size=_int_hparam(node, "speech_token_size", source),
    )


_BUILDERS: dict[str, Callable[[ModelDir], nn.Module]] = {
    "Qwen2LM": _build_qwen2lm,
}


def _builder(model_dir: ModelDir) -> Callable[[ModelDir], nn.Module]:
    class_name = model_dir.stage_config("llm").class_name
    if class_name not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS))
        raise ModelDirError(
            f"{model_dir.generation.yaml_name}: llm class {class_name!r} is not supported (known: {known})"
        )
    return _BUILDERS[class_name]


def build_llm(model_dir: ModelDir) -> nn.Module:
    """A randomly initialised LLM shaped by the model directory's yaml and Qwen config."""
    return _builder(model_dir)(model_dir).eval()


def load_llm(
    model_dir: ModelDir,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build the LLM and strictly load `llm.pt`; errors name the file, keys and shapes."""
    path = model_dir.path(LLM_CHECKPOINT)
    state = read_state_dict(path)
    builder = _builder(model_dir)
    # Building on `meta` skips random init (seconds for the 0.5B model); to_empty() then
    # allocates, and the load overwrites every parameter.
    with torch.device("meta"):
        module = builder(model_dir)
    module.to_empty(device=device)
    module.reset_non_persistent_state()
    load_strict(module, state, str(path))
    return module.to(dtype=dtype).eval()


def official_state_dict(module: nn.Module) -> dict[str, Any]:
    """The state dict in the official `llm.pt` key format (what make-tiny-model saves).

    Tied tensors stay shared (lm_head and embed_tokens), so torch.save stores them once.
    """
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}
