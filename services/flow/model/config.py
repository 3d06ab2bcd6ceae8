"""The CosyVoice 2 flow's hyperparameters, read from the yaml's `flow:` node.

Defaults are the reference constructors' defaults, so a yaml that leaves a key out builds the
same model the reference would. Values the reference cannot run with (or that would silently
build a different architecture than ours) are rejected with the yaml key in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.modeldir.hyperyaml import Tagged

# The reference's UpsampleConformerEncoder hard-codes these instead of reading the yaml:
# PreLookaheadLayer(channels=512, pre_lookahead_len=3), Upsample1D(512, 512, stride=2) and
# four up_encoders. The yaml must agree with them for the reference model to run at all.
REFERENCE_ENCODER_CHANNELS = 512
REFERENCE_PRE_LOOKAHEAD_LEN = 3
REFERENCE_UPSAMPLE_STRIDE = 2
REFERENCE_NUM_UP_BLOCKS = 4
# CausalConditionalCFM draws its start noise as randn(1, 80, 50 * 300) (300 s at 50 Hz).
REFERENCE_NOISE_SHAPE = (1, 80, 15000)
# flow.inference hard-codes 10 Euler steps; the yaml has no key for it.
REFERENCE_N_TIMESTEPS = 10

ENCODER_ACTIVATIONS = ("swish", "relu", "gelu", "tanh", "selu", "hardtanh")
ESTIMATOR_ACTIVATIONS = ("gelu", "gelu-approximate")


class FlowConfigError(ValueError):
    """A flow config our model cannot build; the message names the yaml key."""


def _get(node: Tagged, key: str, default: Any, where: str) -> Any:
    value = node.get(key, default)
    if value is None:
        raise FlowConfigError(f"{where}.{key} is required")
    return value


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise FlowConfigError(f"{field}: {message}")


def _sub_node(node: Tagged, key: str, where: str) -> Tagged:
    value = node.get(key)
    if not isinstance(value, Tagged):
        raise FlowConfigError(f"{where}.{key} must be a !new: node")
    return value


@dataclass(frozen=True)
class EncoderConfig:
    input_size: int
    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    static_chunk_size: int
    activation_type: str
    key_bias: bool

    @classmethod
    def from_node(cls, node: Tagged, where: str = "flow.encoder") -> "EncoderConfig":
        _require(node.class_name == "UpsampleConformerEncoder", where, f"unsupported class {node.target}")
        config = cls(
            input_size=int(_get(node, "input_size", None, where)),
            output_size=int(_get(node, "output_size", 256, where)),
            attention_heads=int(_get(node, "attention_heads", 4, where)),
            linear_units=int(_get(node, "linear_units", 2048, where)),
            num_blocks=int(_get(node, "num_blocks", 6, where)),
            static_chunk_size=int(_get(node, "static_chunk_size", 0, where)),
            activation_type=str(_get(node, "activation_type", "swish", where)),
            key_bias=bool(_get(node, "key_bias", True, where)),
        )
        fixed = {  # options that change the module tree; ours implements CosyVoice 2's choice
            "input_layer": ("conv2d", "linear"),
            "pos_enc_layer_type": ("rel_pos", "rel_pos_espnet"),
            "selfattention_layer_type": ("rel_selfattn", "rel_selfattn"),
            "normalize_before": (True, True),
            "macaron_style": (True, False),
            "use_cnn_module": (True, False),
            "use_dynamic_chunk": (False, False),
        }
        for key, (default, needed) in fixed.items():
            value = node.get(key, default)
            _require(value == needed, f"{where}.{key}", f"only {needed!r} is supported, got {value!r}")
        for key in ("input_size", "output_size"):
            _require(
                getattr(config, key) == REFERENCE_ENCODER_CHANNELS,
                f"{where}.{key}",
                f"must be {REFERENCE_ENCODER_CHANNELS} (the reference hard-codes it in its "
                f"look-ahead and upsample layers), got {getattr(config, key)}",
            )
        _require(config.output_size % config.attention_heads == 0, f"{where}.attention_heads",
                 f"must divide output_size {config.output_size}")
        _require(config.activation_type in ENCODER_ACTIVATIONS, f"{where}.activation_type",
                 f"must be one of {ENCODER_ACTIVATIONS}, got {config.activation_type!r}")
        _require(config.static_chunk_size >= 0, f"{where}.static_chunk_size", "must be >= 0")
        return config


@dataclass(frozen=True)
class EstimatorConfig:
    in_channels: int
    out_channels: int
    channels: int  # the single U-Net level of the causal decoder
    attention_head_dim: int
    n_blocks: int
    num_mid_blocks: int
    num_heads: int
    act_fn: str
    static_chunk_size: int

    @property
    def time_embed_dim(self) -> int:
        return self.channels * 4

    @classmethod
    def from_node(cls, node: Tagged, where: str = "flow.decoder.estimator") -> "EstimatorConfig":
        _require(node.class_name == "CausalConditionalDecoder", where, f"unsupported class {node.target}")
        channels = list(_get(node, "channels", [256, 256], where))
        # With more than one level the reference adds stride-2 Downsample1D/ConvTranspose
        # layers that are not causal; no released CosyVoice 2 model uses them.
        _require(len(channels) == 1, f"{where}.channels", f"only one level is supported, got {channels}")
        config = cls(
            in_channels=int(_get(node, "in_channels", None, where)),
            out_channels=int(_get(node, "out_channels", None, where)),
            channels=int(channels[0]),
            attention_head_dim=int(_get(node, "attention_head_dim", 64, where)),
            n_blocks=int(_get(node, "n_blocks", 1, where)),
            num_mid_blocks=int(_get(node, "num_mid_blocks", 2, where)),
            num_heads=int(_get(node, "num_heads", 4, where)),
            act_fn=str(_get(node, "act_fn", "snake", where)),
            static_chunk_size=int(_get(node, "static_chunk_size", 50, where)),
        )
        _require(config.act_fn in ESTIMATOR_ACTIVATIONS, f"{where}.act_fn",
                 f"must be one of {ESTIMATOR_ACTIVATIONS}, got {config.act_fn!r}")
        _require(config.in_channels == 4 * config.out_channels, f"{where}.in_channels",
                 f"must be 4 x out_channels (x, mu, spks, cond), got {config.in_channels}")
        _require(config.static_chunk_size > 0, f"{where}.static_chunk_size", "must be > 0")
        return config


@dataclass(frozen=True)
class FlowConfig:
    input_size: int
    output_size: int
    spk_embed_dim: int
    vocab_size: int
    token_mel_ratio: int
    pre_lookahead_len: int
    encoder: EncoderConfig
    estimator: EstimatorConfig
    t_scheduler: str
    inference_cfg_rate: float

    @classmethod
    def from_node(cls, node: Tagged, where: str = "flow") -> "FlowConfig":
        _require(node.class_name == "CausalMaskedDiffWithXvec", where, f"unsupported class {node.target}")
        decoder = _sub_node(node, "decoder", where)
        _require(decoder.class_name == "CausalConditionalCFM", f"{where}.decoder",
                 f"unsupported class {decoder.target}")
        cfm_params = decoder.get("cfm_params")
        if isinstance(cfm_params, Tagged):  # !new:omegaconf.DictConfig {content: {...}}
            cfm_params = cfm_params.get("content", cfm_params.kwargs)
        if not isinstance(cfm_params, dict):
            raise FlowConfigError(f"{where}.decoder.cfm_params must be a mapping")
        config = cls(
            input_size=int(_get(node, "input_size", 512, where)),
            output_size=int(_get(node, "output_size", 80, where)),
            spk_embed_dim=int(_get(node, "spk_embed_dim", 192, where)),
            vocab_size=int(_get(node, "vocab_size", 4096, where)),
            token_mel_ratio=int(_get(node, "token_mel_ratio", 2, where)),
            pre_lookahead_len=int(_get(node, "pre_lookahead_len", 3, where)),
            encoder=EncoderConfig.from_node(_sub_node(node, "encoder", where), f"{where}.encoder"),
            estimator=EstimatorConfig.from_node(
                _sub_node(decoder, "estimator", f"{where}.decoder"), f"{where}.decoder.estimator"
            ),
            t_scheduler=str(cfm_params.get("t_scheduler", "cosine")),
            inference_cfg_rate=float(cfm_params.get("inference_cfg_rate", 0.7)),
        )
        _require(config.input_size == config.encoder.input_size, f"{where}.input_size",
                 f"must equal encoder.input_size {config.encoder.input_size}")
        _require(config.pre_lookahead_len == REFERENCE_PRE_LOOKAHEAD_LEN, f"{where}.pre_lookahead_len",
                 f"must be {REFERENCE_PRE_LOOKAHEAD_LEN} (hard-coded in the reference encoder)")
        _require(config.token_mel_ratio == REFERENCE_UPSAMPLE_STRIDE, f"{where}.token_mel_ratio",
                 f"must be {REFERENCE_UPSAMPLE_STRIDE} (the reference encoder upsamples by 2)")
        _require(config.estimator.out_channels == config.output_size,
                 f"{where}.decoder.estimator.out_channels", f"must equal output_size {config.output_size}")
        _require(config.output_size == REFERENCE_NOISE_SHAPE[1], f"{where}.output_size",
                 f"must be {REFERENCE_NOISE_SHAPE[1]} (the reference CFM hard-codes 80 mel bins)")
        return config
