"""build_flow / load_flow / official_state_dict: official keys, strict loading, config errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from services.common.modeldir.checkpoint import CheckpointError
from services.common.modeldir.layout import FLOW_CHECKPOINT, ModelDir, ModelDirError
from services.flow.model.loader import FLOW_BUILDERS, build_flow, load_flow, official_state_dict
from tests.reference.flow import OFFICIAL_YAML, TINY_YAML


def _model_dir(root: Path, state: dict | None = None, yaml_text: str | None = None) -> ModelDir:
    root.mkdir(parents=True, exist_ok=True)
    if yaml_text is None:
        shutil.copy(TINY_YAML, root / "cosyvoice2.yaml")
    else:
        (root / "cosyvoice2.yaml").write_text(yaml_text)
    if state is not None:
        torch.save(state, root / FLOW_CHECKPOINT)
    return ModelDir.open(root)


def test_state_dict_keys_and_shapes_equal_the_reference(reference_flow, our_flow):
    ours = {key: tuple(value.shape) for key, value in our_flow.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in reference_flow.state_dict().items()}
    assert ours == theirs
    # The fixed noise is a buffer that follows .to() but is not a checkpoint key.
    assert "decoder.rand_noise" in dict(our_flow.named_buffers()) and "decoder.rand_noise" not in ours


def test_full_size_config_has_the_official_key_set(tmp_path):
    if not OFFICIAL_YAML.is_file():
        pytest.skip("official configs not available")
    shutil.copy(OFFICIAL_YAML, tmp_path / "cosyvoice2.yaml")
    flow = build_flow(ModelDir.open(tmp_path))
    state = flow.state_dict()
    assert state["encoder.encoders.5.feed_forward.w_1.weight"].shape == (2048, 512)
    assert "encoder.encoders.6.norm_ff.weight" not in state
    assert state["encoder.up_encoders.3.self_attn.pos_bias_u"].shape == (8, 64)
    assert state["decoder.estimator.mid_blocks.11.1.3.attn1.to_q.weight"].shape == (512, 256)
    assert state["decoder.estimator.time_mlp.linear_1.weight"].shape == (1024, 320)
    assert sum(".attn1.to_q.weight" in key for key in state) == 56


def test_official_state_dict_round_trips_through_load_flow(tmp_path, flow_model_dir):
    generated = build_flow(ModelDir.open(flow_model_dir), generator=torch.Generator().manual_seed(5))
    state = official_state_dict(generated)
    assert all(value.device.type == "cpu" for value in state.values())
    loaded = load_flow(_model_dir(tmp_path / "m", state))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_build_with_a_generator_is_deterministic(flow_model_dir):
    model_dir = ModelDir.open(flow_model_dir)
    first = build_flow(model_dir, generator=torch.Generator().manual_seed(9)).state_dict()
    second = build_flow(model_dir, generator=torch.Generator().manual_seed(9)).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_missing_key_is_named(tmp_path, reference_flow):
    state = dict(reference_flow.state_dict())
    del state["encoder.after_norm.weight"]
    with pytest.raises(CheckpointError, match="missing keys: encoder.after_norm.weight"):
        load_flow(_model_dir(tmp_path, state))


def test_unexpected_key_is_named(tmp_path, reference_flow):
    state = dict(reference_flow.state_dict())
    state["decoder.rand_noise"] = torch.zeros(1, 80, 15000)
    with pytest.raises(CheckpointError, match="unexpected keys: decoder.rand_noise"):
        load_flow(_model_dir(tmp_path, state))


def test_wrong_shape_is_named(tmp_path, reference_flow):
    state = dict(reference_flow.state_dict())
    state["encoder_proj.weight"] = torch.zeros(80, 256)
    with pytest.raises(CheckpointError, match=r"encoder_proj.weight has shape \(80, 256\)"):
        load_flow(_model_dir(tmp_path, state))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="flow.pt does not exist"):
        load_flow(_model_dir(tmp_path))


def test_unknown_flow_class_is_rejected(tmp_path):
    text = TINY_YAML.read_text().replace("CausalMaskedDiffWithXvec", "CausalMaskedDiffWithDiT")
    with pytest.raises(ModelDirError, match="CausalMaskedDiffWithDiT is not supported"):
        build_flow(_model_dir(tmp_path, yaml_text=text))
    assert "CausalMaskedDiffWithXvec" in FLOW_BUILDERS


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("channels: [64]", "channels: [64, 64]", "flow.decoder.estimator.channels"),
        ("use_cnn_module: False", "use_cnn_module: True", "flow.encoder.use_cnn_module"),
        ("        output_size: 512\n", "        output_size: 256\n", "flow.encoder.output_size"),
        ("act_fn: 'gelu'", "act_fn: 'snake'", "flow.decoder.estimator.act_fn"),
    ],
)
def test_unsupported_config_names_the_yaml_key(tmp_path, old, new, field):
    text = TINY_YAML.read_text()
    assert old in text
    with pytest.raises(ModelDirError, match=field.replace(".", r"\.")):
        build_flow(_model_dir(tmp_path, yaml_text=text.replace(old, new, 1)))


def test_dtype_and_device_moves(our_flow, flow_model_dir):
    from tests.flow.conftest import make_request

    request = make_request(20, 5, seed=51)
    expected = our_flow.inference(*request.args(), streaming=False, finalize=True)
    double = load_flow(ModelDir.open(flow_model_dir), dtype=torch.float64)
    assert double.decoder.rand_noise.dtype == torch.float64
    actual = double.inference(*request.args(), streaming=False, finalize=True)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max().item() < 1e-3
    half = load_flow(ModelDir.open(flow_model_dir), dtype=torch.bfloat16)
    assert torch.isfinite(half.inference(*request.args(), streaming=True, finalize=False)).all()
