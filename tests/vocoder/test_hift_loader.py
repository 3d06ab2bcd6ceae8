"""Building from the yaml, strict loading with readable errors, and writing the official format."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch

from services.common.modeldir.checkpoint import CheckpointError
from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import ModelDir, ModelDirError
from services.vocoder.model.config import HiFTConfigError, parse_hift_config
from services.vocoder.model.hift import VocoderInputError
from services.vocoder.model.loader import build_hift, load_hift, official_state_dict
from tests.reference.hift import build_reference_hift

MakeModelDir = Callable[[dict[str, torch.Tensor] | None], ModelDir]


def _reference_state(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in reference.state_dict().items()}


def test_official_state_dict_loads_into_the_reference_strictly(
    tiny_node: Tagged, make_model_dir: MakeModelDir, mel: torch.Tensor
) -> None:
    # What make-tiny-model does: random init, official format on disk.
    ours = build_hift(make_model_dir(None))
    official = official_state_dict(ours)
    reference = build_reference_hift(tiny_node)
    assert set(official) == set(reference.state_dict())
    reference.load_state_dict(official, strict=True)

    waveform, source = ours.inference(mel, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.decode(x=mel, s=source)
    torch.testing.assert_close(waveform, expected, atol=1e-5, rtol=0)


def test_written_checkpoint_round_trips_through_load_hift(
    make_model_dir: MakeModelDir, mel: torch.Tensor
) -> None:
    ours = build_hift(make_model_dir(None))
    reloaded = load_hift(make_model_dir(official_state_dict(ours)))
    first, source = ours.inference(mel, generator=torch.Generator().manual_seed(0))
    second, _ = reloaded.inference(mel, source=source)
    torch.testing.assert_close(first, second, atol=1e-5, rtol=0)


def test_missing_key_is_named(
    reference_hift: torch.nn.Module, make_model_dir: MakeModelDir
) -> None:
    state = _reference_state(reference_hift)
    del state["f0_predictor.classifier.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: f0_predictor\.classifier\.bias"):
        load_hift(make_model_dir(state))


def test_missing_weight_norm_pair_is_named(
    reference_hift: torch.nn.Module, make_model_dir: MakeModelDir
) -> None:
    state = _reference_state(reference_hift)
    del state["conv_post.parametrizations.weight.original0"]
    with pytest.raises(CheckpointError, match=r"conv_post\.parametrizations\.weight\.original0/1"):
        load_hift(make_model_dir(state))


def test_unexpected_key_is_named(
    reference_hift: torch.nn.Module, make_model_dir: MakeModelDir
) -> None:
    state = _reference_state(reference_hift)
    state["ups.3.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match=r"unexpected keys: ups\.3\.bias"):
        load_hift(make_model_dir(state))


def test_wrong_shape_is_named(
    reference_hift: torch.nn.Module, make_model_dir: MakeModelDir
) -> None:
    state = _reference_state(reference_hift)
    state["m_source.l_linear.weight"] = torch.zeros(1, 7)
    with pytest.raises(CheckpointError, match=r"m_source\.l_linear\.weight has shape \(1, 7\)"):
        load_hift(make_model_dir(state))


def test_missing_file_is_named(make_model_dir: MakeModelDir) -> None:
    with pytest.raises(ModelDirError, match="hift.pt"):
        load_hift(make_model_dir(None))


def test_build_dispatches_on_the_yaml_class(make_model_dir: MakeModelDir) -> None:
    model_dir = make_model_dir(None)
    node = copy.deepcopy(model_dir.stage_config("hift"))
    assert node.class_name == "HiFTGenerator"
    node.target = "cosyvoice.hifigan.generator.CausalHiFTGenerator"
    model_dir.config["hift"] = node
    with pytest.raises(HiFTConfigError, match="CausalHiFTGenerator is not supported"):
        build_hift(model_dir)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("upsample_kernel_sizes", [16, 11], "upsample_kernel_sizes has 2 entries"),
        ("base_channels", 60, "base_channels"),
        ("sampling_rate", 22050, "SineGen"),
        ("nsf_alpha", "loud", "nsf_alpha must be a number"),
        ("resblock_dilation_sizes", [[1, 3, 5], [1, 3, 5]], "resblock_dilation_sizes has 2"),
        ("istft_params", {"n_fft": 16}, "istft_params"),
    ],
)
def test_bad_hyperparameters_name_the_key(
    tiny_node: Tagged, key: str, value: object, message: str
) -> None:
    node = copy.deepcopy(tiny_node)
    node.kwargs[key] = value
    with pytest.raises(HiFTConfigError, match=message):
        parse_hift_config(node)


def test_unknown_f0_predictor_class_is_named(tiny_node: Tagged) -> None:
    from services.vocoder.model.loader import build_hift_from_config

    node = copy.deepcopy(tiny_node)
    node.kwargs["f0_predictor"].target = "cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor"
    with pytest.raises(HiFTConfigError, match="CausalConvRNNF0Predictor is not supported"):
        build_hift_from_config(parse_hift_config(node))


def test_inference_rejects_bad_inputs(make_model_dir: MakeModelDir) -> None:
    model = build_hift(make_model_dir(None))
    mel = torch.zeros(2, 80, 4)
    with pytest.raises(VocoderInputError, match="mel must have shape"):
        model.inference(torch.zeros(80, 4))
    with pytest.raises(VocoderInputError, match="source must have shape"):
        model.inference(mel, source=torch.zeros(2, 1, 100))
    with pytest.raises(VocoderInputError, match="cache_source must have shape"):
        model.inference(mel, cache_source=torch.zeros(2, 1, 4 * 480 + 1))
    with pytest.raises(ValueError, match="generator"):
        model.inference(mel, generator=[torch.Generator()])
