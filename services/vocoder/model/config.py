"""HiFT hyperparameters, read from the yaml's `hift` node and checked before any module is built.

Keys the yaml leaves out take the reference constructor's defaults (`HiFTGenerator.__init__`,
`ConvRNNF0Predictor.__init__`), so a yaml that builds in the reference builds here too. What
the reference would silently accept but compute wrongly (mismatched list lengths, which its
`zip` truncates) is rejected with an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from services.common.modeldir.hyperyaml import Tagged
from services.common.modeldir.layout import ModelDirError


class HiFTConfigError(ModelDirError):
    """A `hift` yaml node that cannot describe a supported HiFT generator."""


@dataclass(frozen=True)
class F0PredictorConfig:
    class_name: str
    in_channels: int
    cond_channels: int
    num_class: int


@dataclass(frozen=True)
class HiFTConfig:
    class_name: str
    in_channels: int
    base_channels: int
    nb_harmonics: int
    sampling_rate: int
    nsf_alpha: float
    nsf_sigma: float
    nsf_voiced_threshold: float
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    n_fft: int
    hop_len: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    source_resblock_kernel_sizes: tuple[int, ...]
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    lrelu_slope: float
    audio_limit: float
    f0_predictor: F0PredictorConfig

    @property
    def samples_per_frame(self) -> int:
        """Output samples per mel frame: the upsampling product times the iSTFT hop (480)."""
        return prod(self.upsample_rates) * self.hop_len

    @property
    def num_harmonic_channels(self) -> int:
        return self.nb_harmonics + 1

    @property
    def spectrum_channels(self) -> int:
        """Real and imaginary parts of the n_fft // 2 + 1 bins, stacked."""
        return self.n_fft + 2


# The reference constructors' defaults (v2 HiFTGenerator / ConvRNNF0Predictor signatures).
_HIFT_DEFAULTS: dict[str, Any] = {
    "in_channels": 80,
    "base_channels": 512,
    "nb_harmonics": 8,
    "sampling_rate": 22050,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "nsf_voiced_threshold": 10,
    "upsample_rates": [8, 8],
    "upsample_kernel_sizes": [16, 16],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
}
_F0_DEFAULTS: dict[str, Any] = {"num_class": 1, "in_channels": 80, "cond_channels": 512}


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HiFTConfigError(f"hift.{field} must be a positive integer, got {value!r}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HiFTConfigError(f"hift.{field} must be a number, got {value!r}")
    return float(value)


def _int_list(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise HiFTConfigError(f"hift.{field} must be a non-empty list of integers, got {value!r}")
    return tuple(_positive_int(item, f"{field}[{i}]") for i, item in enumerate(value))


def _nested_int_list(value: Any, field: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise HiFTConfigError(f"hift.{field} must be a non-empty list of lists, got {value!r}")
    return tuple(_int_list(item, f"{field}[{i}]") for i, item in enumerate(value))


def _same_length(field_a: str, a: tuple, field_b: str, b: tuple) -> None:
    if len(a) != len(b):
        raise HiFTConfigError(
            f"hift.{field_b} has {len(b)} entries but hift.{field_a} has {len(a)}; they pair up"
        )


def parse_f0_predictor(node: Any) -> F0PredictorConfig:
    if not isinstance(node, Tagged):
        raise HiFTConfigError("hift.f0_predictor must be a !new: node (e.g. ConvRNNF0Predictor)")
    kwargs = {**_F0_DEFAULTS, **node.kwargs}
    config = F0PredictorConfig(
        class_name=node.class_name,
        in_channels=_positive_int(kwargs["in_channels"], "f0_predictor.in_channels"),
        cond_channels=_positive_int(kwargs["cond_channels"], "f0_predictor.cond_channels"),
        num_class=_positive_int(kwargs["num_class"], "f0_predictor.num_class"),
    )
    if config.num_class != 1:
        # The generator squeezes the class axis away, so only one output (f0 in Hz) works.
        raise HiFTConfigError(f"hift.f0_predictor.num_class must be 1, got {config.num_class}")
    return config


def parse_hift_config(node: Tagged) -> HiFTConfig:
    """Validate the yaml `hift` node (any generator class) into a HiFTConfig."""
    kwargs = {**_HIFT_DEFAULTS, **node.kwargs}
    istft = kwargs["istft_params"]
    if not isinstance(istft, dict) or not {"n_fft", "hop_len"} <= istft.keys():
        raise HiFTConfigError(f"hift.istft_params must map n_fft and hop_len, got {istft!r}")
    config = HiFTConfig(
        class_name=node.class_name,
        in_channels=_positive_int(kwargs["in_channels"], "in_channels"),
        base_channels=_positive_int(kwargs["base_channels"], "base_channels"),
        nb_harmonics=_positive_int(kwargs["nb_harmonics"], "nb_harmonics"),
        sampling_rate=_positive_int(kwargs["sampling_rate"], "sampling_rate"),
        nsf_alpha=_number(kwargs["nsf_alpha"], "nsf_alpha"),
        nsf_sigma=_number(kwargs["nsf_sigma"], "nsf_sigma"),
        nsf_voiced_threshold=_number(kwargs["nsf_voiced_threshold"], "nsf_voiced_threshold"),
        upsample_rates=_int_list(kwargs["upsample_rates"], "upsample_rates"),
        upsample_kernel_sizes=_int_list(kwargs["upsample_kernel_sizes"], "upsample_kernel_sizes"),
        n_fft=_positive_int(istft["n_fft"], "istft_params.n_fft"),
        hop_len=_positive_int(istft["hop_len"], "istft_params.hop_len"),
        resblock_kernel_sizes=_int_list(kwargs["resblock_kernel_sizes"], "resblock_kernel_sizes"),
        resblock_dilation_sizes=_nested_int_list(
            kwargs["resblock_dilation_sizes"], "resblock_dilation_sizes"
        ),
        source_resblock_kernel_sizes=_int_list(
            kwargs["source_resblock_kernel_sizes"], "source_resblock_kernel_sizes"
        ),
        source_resblock_dilation_sizes=_nested_int_list(
            kwargs["source_resblock_dilation_sizes"], "source_resblock_dilation_sizes"
        ),
        lrelu_slope=_number(kwargs["lrelu_slope"], "lrelu_slope"),
        audio_limit=_number(kwargs["audio_limit"], "audio_limit"),
        f0_predictor=parse_f0_predictor(kwargs.get("f0_predictor")),
    )
    _check_consistency(config)
    return config


def _check_consistency(config: HiFTConfig) -> None:
    _same_length("upsample_rates", config.upsample_rates,
                 "upsample_kernel_sizes", config.upsample_kernel_sizes)
    _same_length("resblock_kernel_sizes", config.resblock_kernel_sizes,
                 "resblock_dilation_sizes", config.resblock_dilation_sizes)
    _same_length("upsample_rates", config.upsample_rates,
                 "source_resblock_kernel_sizes", config.source_resblock_kernel_sizes)
    _same_length("source_resblock_kernel_sizes", config.source_resblock_kernel_sizes,
                 "source_resblock_dilation_sizes", config.source_resblock_dilation_sizes)
    if config.base_channels % (2 ** len(config.upsample_rates)):
        raise HiFTConfigError(
            f"hift.base_channels ({config.base_channels}) must halve evenly "
            f"{len(config.upsample_rates)} times, once per upsample stage"
        )
    if config.sampling_rate == 22050:
        # At 22050 Hz the reference switches to the CosyVoice 1 sine generator (SineGen).
        raise HiFTConfigError(
            "hift.sampling_rate 22050 selects CosyVoice 1's SineGen, which is not supported"
        )
    if config.samples_per_frame < 3:
        # SineGen2 resamples the phase by 1/samples_per_frame; from 3 on, that resampling never
        # reads a frame's first sample, which our frame-rate phase integration relies on.
        raise HiFTConfigError(
            f"hift.upsample_rates × istft_params.hop_len = {config.samples_per_frame} "
            "must be ≥ 3"
        )
    if config.f0_predictor.in_channels != config.in_channels:
        raise HiFTConfigError(
            f"hift.f0_predictor.in_channels ({config.f0_predictor.in_channels}) must equal "
            f"hift.in_channels ({config.in_channels}): both read the same mel"
        )
    if config.n_fft % 2:
        raise HiFTConfigError(f"hift.istft_params.n_fft must be even, got {config.n_fft}")
