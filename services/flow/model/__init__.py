"""Flow stage model code: upsample conformer encoder, causal estimator, CFM solver, loader."""

from services.flow.model.config import FlowConfig, FlowConfigError
from services.flow.model.flow import CausalMaskedDiffWithXvec
from services.flow.model.loader import build_flow, load_flow, official_state_dict
from services.flow.model.masks import FlowInputError

__all__ = [
    "CausalMaskedDiffWithXvec",
    "FlowConfig",
    "FlowConfigError",
    "FlowInputError",
    "build_flow",
    "load_flow",
    "official_state_dict",
]
