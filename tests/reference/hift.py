"""The reference HiFT vocoder as a test oracle, built from a parsed yaml `hift` node.

The reference's own `CosyVoice2Model.token2wav` is used for streaming parity, with its flow
replaced by a stub that replays given mels (the vocoder part is what is under test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from services.common.modeldir.hyperyaml import Tagged, load_hyperyaml
from tests.reference import ref

TINY_YAML = Path(__file__).resolve().parents[2] / "services" / "tinymodel" / "cosyvoice2_tiny.yaml"
_SHARED = Path(__file__).resolve().parents[3] / "shared"
OFFICIAL_V2_YAML = _SHARED / "reference" / "official-configs" / "cosyvoice2.yaml"


def hift_node(yaml_path: Path = TINY_YAML) -> Tagged:
    node = load_hyperyaml(yaml_path)["hift"]
    if not isinstance(node, Tagged):
        raise TypeError(f"{yaml_path}: hift is not a !new: node")
    return node


def build_reference_hift(node: Tagged) -> torch.nn.Module:
    """`cosyvoice.hifigan.generator.HiFTGenerator` with the node's hyperparameters, eval mode."""
    generator_module = ref("cosyvoice.hifigan.generator")
    f0_module = ref("cosyvoice.hifigan.f0_predictor")
    kwargs = dict(node.kwargs)
    f0_node = kwargs.pop("f0_predictor")
    f0_predictor = getattr(f0_module, f0_node.class_name)(**f0_node.kwargs)
    generator_class = getattr(generator_module, node.class_name)
    return generator_class(**kwargs, f0_predictor=f0_predictor).eval()


def legacy_weight_norm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pre-parametrization spelling (`weight_g` / `weight_v`) of the same weights."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        renamed[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return renamed


class _ReplayFlow(torch.nn.Module):
    """Stands in for the flow in `token2wav`: returns the next prepared mel, whatever the tokens.

    `token2wav` slices `mel[:, :, token_offset * token_mel_ratio:]`; the replayed mels are
    built to already include that prefix.
    """

    token_mel_ratio = 2
    input_frame_rate = 25
    pre_lookahead_len = 3

    def __init__(self, mels: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self._mels: Iterator[torch.Tensor] = iter(mels)

    def inference(self, **_: object) -> tuple[torch.Tensor, None]:
        return next(self._mels), None


def reference_stream(
    hift: torch.nn.Module, chunks: Sequence[torch.Tensor], seed: int | None
) -> list[torch.Tensor]:
    """Vocode mel chunks (1, 80, T_i) through the reference's own streaming `token2wav`.

    All chunks but the last are non-final. With a seed, the global RNG is seeded once before
    the first chunk, as a request seeded with `set_all_random_seed` would be.
    """
    model_module = ref("cosyvoice.cli.model")
    offsets, mels, frames_so_far = [], [], 0
    for chunk in chunks:
        # token_offset · 2 frames of history precede the new frames; any values do, they are cut.
        offsets.append(frames_so_far // _ReplayFlow.token_mel_ratio)
        history = torch.zeros(1, chunk.shape[1], offsets[-1] * _ReplayFlow.token_mel_ratio)
        mels.append(torch.cat([history, chunk], dim=2))
        frames_so_far += chunk.shape[2]
        if frames_so_far % _ReplayFlow.token_mel_ratio:
            raise ValueError("reference_stream needs chunks of an even number of mel frames")
    model = model_module.CosyVoice2Model(torch.nn.Identity(), _ReplayFlow(mels), hift)
    model.hift_cache_dict["request"] = None
    if seed is not None:
        torch.manual_seed(seed)
    outputs = []
    for index, offset in enumerate(offsets):
        outputs.append(model.token2wav(
            token=torch.zeros(1, 1, dtype=torch.int32),
            prompt_token=torch.zeros(1, 0, dtype=torch.int32),
            prompt_feat=torch.zeros(1, 0, 80),
            embedding=torch.zeros(1, 192),
            token_offset=offset,
            uuid="request",
            stream=True,
            finalize=index == len(chunks) - 1,
        ))
    return outputs
