"""build_llm / load_llm / official_state_dict: the official key format and strict-load errors."""

from __future__ import annotations

import pytest
import torch

from services.common.modeldir.checkpoint import CheckpointError
from services.common.modeldir.layout import ModelDir, ModelDirError
from services.llm.model.cosyvoice2_lm import CosyVoice2LM
from services.llm.model.loader import build_llm, load_llm, official_state_dict


def test_keys_and_shapes_equal_the_reference(reference_setup, tiny_lm) -> None:
    _, reference = reference_setup
    ours = official_state_dict(tiny_lm)
    theirs = reference.state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert "llm.model.lm_head.weight" in ours and "llm_embedding.weight" in ours
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_build_is_random_and_round_trips_through_load(new_model_dir) -> None:
    model_dir = new_model_dir()
    built = build_llm(model_dir)
    assert isinstance(built, CosyVoice2LM)
    state = official_state_dict(built)
    # Tied like the official checkpoint: both keys, one tensor.
    assert state["llm.model.lm_head.weight"].data_ptr() == state["llm.model.model.embed_tokens.weight"].data_ptr()
    torch.save(state, model_dir.root / "llm.pt")
    loaded = load_llm(model_dir, dtype=torch.float64)
    assert loaded.llm_decoder.weight.dtype == torch.float64
    assert loaded.backbone.lm_head.weight is loaded.backbone.model.embed_tokens.weight
    for key, value in official_state_dict(loaded).items():
        assert torch.equal(value, state[key].double()), key


@pytest.fixture
def saved_state(new_model_dir):
    model_dir = new_model_dir()
    return model_dir, official_state_dict(build_llm(model_dir))


def _expect_error(model_dir: ModelDir, state: dict, *fragments: str) -> None:
    torch.save(state, model_dir.root / "llm.pt")
    with pytest.raises(CheckpointError) as info:
        load_llm(model_dir)
    for fragment in ("llm.pt", *fragments):
        assert fragment in str(info.value)


def test_missing_checkpoint_names_the_file(new_model_dir) -> None:
    with pytest.raises(CheckpointError, match="llm.pt"):
        load_llm(new_model_dir())


def test_missing_key_is_named(saved_state) -> None:
    model_dir, state = saved_state
    del state["llm_decoder.bias"]
    _expect_error(model_dir, state, "missing", "llm_decoder.bias")


def test_unexpected_key_is_named(saved_state) -> None:
    model_dir, state = saved_state
    state["llm.model.model.rotary_emb.inv_freq"] = torch.zeros(8)
    _expect_error(model_dir, state, "unexpected", "llm.model.model.rotary_emb.inv_freq")


def test_wrong_shape_is_named_with_both_shapes(saved_state) -> None:
    model_dir, state = saved_state
    state["speech_embedding.weight"] = torch.zeros(6561, 64)
    _expect_error(model_dir, state, "speech_embedding.weight", "(6561, 64)", "(6564, 64)")


def test_unknown_llm_class_is_rejected(new_model_dir) -> None:
    model_dir = new_model_dir()
    yaml_path = model_dir.root / "cosyvoice2.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("llm.llm.Qwen2LM", "llm.llm.TransformerLM"))
    with pytest.raises(ModelDirError, match="TransformerLM"):
        build_llm(ModelDir.open(model_dir.root))


def test_yaml_and_qwen_hidden_size_must_agree(new_model_dir) -> None:
    with pytest.raises(ModelDirError, match="hidden_size 128"):
        build_llm(new_model_dir(hidden_size=128))
