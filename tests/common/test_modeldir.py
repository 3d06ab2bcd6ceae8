import shutil

import pytest
import torch
from torch import nn

from services.common.modeldir.checkpoint import (
    CheckpointError,
    fold_weight_norm,
    load_strict,
    read_state_dict,
    strip_substring,
)
from services.common.modeldir.layout import ModelDir, ModelDirError
from tests.conftest import OFFICIAL_CONFIGS, TINY_YAML


def test_open_detects_generation_in_reference_order(tmp_path):
    shutil.copy(TINY_YAML, tmp_path / "cosyvoice2.yaml")
    model_dir = ModelDir.open(tmp_path)
    assert model_dir.generation.name == "cosyvoice2"
    assert model_dir.stage_config("flow").class_name == "CausalMaskedDiffWithXvec"
    assert model_dir.sample_rate == 24000
    assert model_dir.spk2info_path is None  # optional, like the reference


def test_unsupported_generations_are_named(tmp_path):
    shutil.copy(OFFICIAL_CONFIGS / "cosyvoice3.yaml", tmp_path / "cosyvoice3.yaml")
    with pytest.raises(ModelDirError, match="cosyvoice3 models are not supported"):
        ModelDir.open(tmp_path)
    assert ModelDir.open(tmp_path, allow_unsupported=True).generation.name == "cosyvoice3"


def test_missing_directory_yaml_and_files_are_named(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        ModelDir.open(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="cosyvoice2.yaml"):
        ModelDir.open(tmp_path)
    shutil.copy(TINY_YAML, tmp_path / "cosyvoice2.yaml")
    model_dir = ModelDir.open(tmp_path)
    with pytest.raises(ModelDirError, match="missing llm.pt"):
        model_dir.require("llm.pt")
    with pytest.raises(ModelDirError, match="CosyVoice-BlankEN/config.json"):
        _ = model_dir.qwen_config


def test_broken_yaml_is_reported_with_its_file(tmp_path):
    (tmp_path / "cosyvoice2.yaml").write_text("llm: !ref <nothing>\n")
    with pytest.raises(ModelDirError, match="cosyvoice2.yaml.*names no key"):
        _ = ModelDir.open(tmp_path).config


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.conv = nn.Conv1d(2, 4, 3)


def test_strict_load_names_missing_unexpected_and_misshapen_keys():
    state = _Toy().state_dict()
    load_strict(_Toy(), state, "toy.pt")
    broken = dict(state)
    del broken["proj.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["conv.weight"] = torch.zeros(4, 2, 5)
    with pytest.raises(CheckpointError) as info:
        load_strict(_Toy(), broken, "toy.pt")
    message = str(info.value)
    assert "toy.pt" in message
    assert "missing keys: proj.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv.weight has shape (4, 2, 5), the config needs (4, 2, 3)" in message


def test_read_state_dict_rejects_missing_and_non_tensor_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "x.pt")
    torch.save({"a": 1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        read_state_dict(tmp_path / "bad.pt")


@pytest.mark.parametrize("style", ["parametrizations", "legacy"])
def test_fold_weight_norm_accepts_both_key_styles(style):
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3))
    state = conv.state_dict()
    effective = conv.weight.detach().clone()
    if style == "legacy":
        state = {
            "weight_g" if k.endswith("original0") else "weight_v" if k.endswith("original1") else k: v
            for k, v in state.items()
        }
    prefixed = {f"generator.conv.{k}": v for k, v in state.items()}
    folded = fold_weight_norm(strip_substring(prefixed, "generator."), ["conv"], "hift.pt")
    assert set(folded) == {"conv.weight", "conv.bias"}
    torch.testing.assert_close(folded["conv.weight"], effective, rtol=0, atol=1e-7)


def test_fold_weight_norm_names_a_missing_layer():
    with pytest.raises(CheckpointError, match=r"hift.pt is missing weight-norm keys ups.0"):
        fold_weight_norm({}, ["ups.0"], "hift.pt")
