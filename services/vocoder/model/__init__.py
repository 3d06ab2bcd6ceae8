"""HiFT vocoder model code: pure nn.Modules, weight loading, and per-request streaming state."""

from services.vocoder.model.config import HiFTConfig, HiFTConfigError, parse_hift_config
from services.vocoder.model.hift import HiFTGenerator, VocoderInputError
from services.vocoder.model.loader import (
    build_hift,
    build_hift_from_config,
    load_hift,
    load_hift_state,
    official_state_dict,
)
from services.vocoder.model.streaming import (
    MEL_CACHE_FRAMES,
    PreparedChunk,
    VocoderStream,
    VocoderStreamError,
    vocode_batch,
)

__all__ = [
    "HiFTConfig",
    "HiFTConfigError",
    "HiFTGenerator",
    "MEL_CACHE_FRAMES",
    "PreparedChunk",
    "VocoderInputError",
    "VocoderStream",
    "VocoderStreamError",
    "build_hift",
    "build_hift_from_config",
    "load_hift",
    "load_hift_state",
    "official_state_dict",
    "parse_hift_config",
    "vocode_batch",
]
