"""Key shapes and block counts each official checkpoint must have, derived from the yaml (and
for the LLM from `CosyVoice-BlankEN/config.json`) without building a module.

These are the tensors that go wrong when a checkpoint and a config come from different models:
embeddings (vocabulary and width), the first layer of each block stack, and the number of
blocks. The stage loaders still do the full strict check when a service starts; this is the
quick look an operator gets from `cosyvoice check-model` before starting anything.
"""

from __future__ import annotations

from collections.abc import Collection

from services.common.modeldir.checkpoint_summary import ExpectedCount, ExpectedShape
from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import QWEN_DIR, ModelDir, ModelDirError

Expectations = tuple[list[ExpectedShape], list[ExpectedCount]]

# Row count of the LLM's speech embedding and head: the speech codes plus SOS/EOS, TASK_ID
# and FILL, as CosyVoice2LM builds them.
SPEECH_EXTRA_ROWS = 3
# Kernel sizes the reference HiFTGenerator and ConvRNNF0Predictor hard-code (not in the yaml).
HIFT_CONV_PRE_KERNEL = 7
HIFT_CONV_POST_KERNEL = 7
F0_CONDNET_KERNEL = 3
ESTIMATOR_BLOCK_KERNEL = 3


def _int(node: Tagged, key: str, where: str) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelDirError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _supported(model_dir: ModelDir, stage: str, known: Collection[str]) -> Tagged:
    """The stage's yaml node, if one of our loaders has a builder for its class."""
    node = model_dir.stage_config(stage)
    if node.class_name not in known:
        raise ModelDirError(
            f"{model_dir.generation.yaml_name}: {stage} class {node.class_name!r} is not supported "
            f"(known: {', '.join(sorted(known))})"
        )
    return node


def llm_expectations(model_dir: ModelDir) -> Expectations:
    from services.llm.model.loader import _BUILDERS as LLM_BUILDERS
    from services.llm.model.qwen2 import Qwen2Config

    yaml_name = model_dir.generation.yaml_name
    node = _supported(model_dir, "llm", LLM_BUILDERS)
    qwen = Qwen2Config.from_dict(model_dir.qwen_config, source=f"{QWEN_DIR}/config.json")
    input_size = _int(node, "llm_input_size", f"{yaml_name}: llm")
    output_size = _int(node, "llm_output_size", f"{yaml_name}: llm")
    speech_rows = _int(node, "speech_token_size", f"{yaml_name}: llm") + SPEECH_EXTRA_ROWS
    hidden, layer = qwen.hidden_size, "llm.model.model.layers.0"
    shapes = [
        ExpectedShape("llm.model.model.embed_tokens.weight", (qwen.vocab_size, hidden),
                      "config.json vocab_size, hidden_size"),
        ExpectedShape("llm.model.lm_head.weight", (qwen.vocab_size, hidden), "config.json vocab_size, hidden_size"),
        ExpectedShape(f"{layer}.self_attn.q_proj.weight", (qwen.num_attention_heads * qwen.head_dim, hidden),
                      "config.json num_attention_heads x head_dim, hidden_size"),
        ExpectedShape(f"{layer}.self_attn.k_proj.weight", (qwen.num_key_value_heads * qwen.head_dim, hidden),
                      "config.json num_key_value_heads x head_dim, hidden_size"),
        ExpectedShape(f"{layer}.mlp.gate_proj.weight", (qwen.intermediate_size, hidden),
                      "config.json intermediate_size, hidden_size"),
        ExpectedShape("llm_embedding.weight", (2, input_size), "SOS and TASK_ID rows, llm_input_size"),
        ExpectedShape("speech_embedding.weight", (speech_rows, input_size),
                      f"speech_token_size + {SPEECH_EXTRA_ROWS}, llm_input_size"),
        ExpectedShape("llm_decoder.weight", (speech_rows, output_size),
                      f"speech_token_size + {SPEECH_EXTRA_ROWS}, llm_output_size"),
    ]  # fmt: skip
    counts = [ExpectedCount("llm.model.model.layers", qwen.num_hidden_layers, "config.json num_hidden_layers")]
    return shapes, counts


def flow_expectations(model_dir: ModelDir) -> Expectations:
    from services.flow.model.config import REFERENCE_NUM_UP_BLOCKS, FlowConfig, FlowConfigError
    from services.flow.model.loader import FLOW_BUILDERS

    node = _supported(model_dir, "flow", FLOW_BUILDERS)
    try:
        config = FlowConfig.from_node(node)
    except FlowConfigError as exc:
        raise ModelDirError(f"{model_dir.generation.yaml_name}: {exc}") from None
    encoder, estimator = config.encoder, config.estimator
    shapes = [
        ExpectedShape("input_embedding.weight", (config.vocab_size, config.input_size), "flow.vocab_size, input_size"),
        ExpectedShape("spk_embed_affine_layer.weight", (config.output_size, config.spk_embed_dim),
                      "flow.output_size, spk_embed_dim"),
        ExpectedShape("encoder.embed.out.0.weight", (encoder.output_size, encoder.input_size),
                      "encoder.output_size, input_size"),
        ExpectedShape("encoder.encoders.0.feed_forward.w_1.weight", (encoder.linear_units, encoder.output_size),
                      "encoder.linear_units, output_size"),
        ExpectedShape("encoder_proj.weight", (config.output_size, encoder.output_size),
                      "flow.output_size, encoder.output_size"),
        ExpectedShape("decoder.estimator.time_mlp.linear_1.weight", (estimator.time_embed_dim, estimator.in_channels),
                      "estimator 4 x channels, in_channels"),
        ExpectedShape("decoder.estimator.down_blocks.0.0.block1.block.0.weight",
                      (estimator.channels, estimator.in_channels, ESTIMATOR_BLOCK_KERNEL),
                      "estimator channels, in_channels"),
        ExpectedShape("decoder.estimator.final_proj.weight", (estimator.out_channels, estimator.channels, 1),
                      "estimator out_channels, channels"),
    ]  # fmt: skip
    counts = [
        ExpectedCount("encoder.encoders", encoder.num_blocks, "encoder.num_blocks"),
        ExpectedCount("encoder.up_encoders", REFERENCE_NUM_UP_BLOCKS, "fixed by the reference encoder"),
        ExpectedCount("decoder.estimator.down_blocks.0.1", estimator.n_blocks, "estimator.n_blocks"),
        ExpectedCount("decoder.estimator.mid_blocks", estimator.num_mid_blocks, "estimator.num_mid_blocks"),
    ]
    return shapes, counts


def _weight_normed(prefix: str, shape: tuple[int, ...], because: str) -> ExpectedShape:
    """A layer stored plain or weight-normed in either spelling; v carries the full shape."""
    return ExpectedShape(
        f"{prefix}.weight", shape, because,
        aliases=(f"{prefix}.parametrizations.weight.original1", f"{prefix}.weight_v"),
    )  # fmt: skip


def hift_expectations(model_dir: ModelDir) -> Expectations:
    from services.vocoder.model.config import HiFTConfigError, parse_hift_config
    from services.vocoder.model.loader import F0_PREDICTORS, GENERATORS

    node = _supported(model_dir, "hift", GENERATORS)
    try:
        config = parse_hift_config(node)
    except HiFTConfigError as exc:
        raise ModelDirError(f"{model_dir.generation.yaml_name}: {exc}") from None
    f0 = config.f0_predictor
    if f0.class_name not in F0_PREDICTORS:
        raise ModelDirError(
            f"{model_dir.generation.yaml_name}: hift.f0_predictor class {f0.class_name!r} is not supported"
        )
    stages = len(config.upsample_rates)
    shapes = [
        _weight_normed("conv_pre", (config.base_channels, config.in_channels, HIFT_CONV_PRE_KERNEL),
                       "hift.base_channels, in_channels"),
        _weight_normed("ups.0", (config.base_channels, config.base_channels // 2, config.upsample_kernel_sizes[0]),
                       "hift.base_channels, base_channels / 2, upsample_kernel_sizes[0]"),
        _weight_normed("conv_post",
                       (config.spectrum_channels, config.base_channels // 2**stages, HIFT_CONV_POST_KERNEL),
                       "istft n_fft + 2, base_channels / 2^len(upsample_rates)"),
        _weight_normed("f0_predictor.condnet.0", (f0.cond_channels, f0.in_channels, F0_CONDNET_KERNEL),
                       "f0_predictor.cond_channels, in_channels"),
        ExpectedShape("f0_predictor.classifier.weight", (f0.num_class, f0.cond_channels),
                      "f0_predictor.num_class, cond_channels"),
        ExpectedShape("m_source.l_linear.weight", (1, config.num_harmonic_channels), "hift.nb_harmonics + 1"),
    ]  # fmt: skip
    counts = [
        ExpectedCount("ups", stages, "len(upsample_rates)"),
        ExpectedCount("resblocks", stages * len(config.resblock_kernel_sizes),
                      "len(upsample_rates) x len(resblock_kernel_sizes)"),
        ExpectedCount("source_resblocks", len(config.source_resblock_kernel_sizes),
                      "len(source_resblock_kernel_sizes)"),
    ]  # fmt: skip
    return shapes, counts
