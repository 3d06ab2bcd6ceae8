import pytest

from services.common.modeldir.hyperyaml import ConfigError, Tagged, load_hyperyaml, parse_hyperyaml
from tests.conftest import OFFICIAL_CONFIGS, TINY_YAML


@pytest.mark.parametrize(
    ("name", "llm_class", "flow_class", "hift_class"),
    [
        ("cosyvoice.yaml", "TransformerLM", "MaskedDiffWithXvec", "HiFTGenerator"),
        ("cosyvoice2.yaml", "Qwen2LM", "CausalMaskedDiffWithXvec", "HiFTGenerator"),
        ("cosyvoice3.yaml", "CosyVoice3LM", "CausalMaskedDiffWithDiT", "CausalHiFTGenerator"),
    ],
)
def test_official_configs_parse_without_executing_tags(name, llm_class, flow_class, hift_class):
    config = load_hyperyaml(OFFICIAL_CONFIGS / name)
    assert config["llm"].class_name == llm_class
    assert config["flow"].class_name == flow_class
    assert config["hift"].class_name == hift_class
    # !apply: seeds stay inert nodes instead of reseeding our process.
    assert config["__set_seed3"] == Tagged("apply", "torch.manual_seed", args=[1986])
    assert config["sample_rate"] in (22050, 24000)


def test_cosyvoice2_values_resolve_refs_and_arithmetic():
    config = load_hyperyaml(OFFICIAL_CONFIGS / "cosyvoice2.yaml")
    estimator = config["flow"]["decoder"]["estimator"]
    assert estimator["static_chunk_size"] == 50  # !ref <chunk_size> * <token_mel_ratio>
    assert estimator["num_decoding_left_chunks"] == -1
    assert config["llm"]["llm_input_size"] == 896
    assert config["llm"]["sampling"].kind == "name"
    assert config["llm"]["sampling"]["top_k"] == 25
    assert config["flow"]["decoder"]["cfm_params"]["content"]["inference_cfg_rate"] == 0.7
    assert config["flow"]["decoder"]["cfm_params"]["content"]["sigma_min"] == 1e-6
    assert config["hift"]["istft_params"] == {"n_fft": 16, "hop_len": 4}
    # A bare !ref keeps the referenced node itself.
    assert config["hifigan"]["generator"] is config["hift"] or config["hifigan"]["generator"] == config["hift"]
    assert config["feat_extractor"]["fmax"] == 8000


def test_cosyvoice3_feat_extractor_has_null_fmax():
    config = load_hyperyaml(OFFICIAL_CONFIGS / "cosyvoice3.yaml")
    assert config["feat_extractor"]["fmax"] is None
    assert config["flow"]["pre_lookahead_layer"].class_name == "PreLookaheadLayer"


def test_tiny_yaml_has_the_official_form():
    tiny = load_hyperyaml(TINY_YAML)
    official = load_hyperyaml(OFFICIAL_CONFIGS / "cosyvoice2.yaml")
    for stage in ("llm", "flow", "hift"):
        assert tiny[stage].target == official[stage].target
        assert tiny[stage].kwargs.keys() == official[stage].kwargs.keys()


def test_string_interpolation_and_nested_refs():
    config = parse_hyperyaml("root: /data\nsub: !ref <root>/x\nn: {a: 3}\nm: !ref <n.a> + 1\n")
    assert config["sub"] == "/data/x"
    assert config["m"] == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !ref <missing>\n", "names no key"),
        ("a: !!python/object/apply:os.system ['true']\n", "unsupported yaml tag"),
        ("a: !include other.yaml\n", "unsupported yaml tag"),
        ("a: !ref <b>\nb: !ref <a>\n", "circular"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_configs_are_rejected_with_a_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_hyperyaml(text)
