"""Our HiFT against the reference HiFTGenerator: same weights through the official file format,
same mel, same source excitation or same seed."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from scipy.signal import get_window

from services.common.modeldir.layout import ModelDir
from services.vocoder.model.loader import load_hift
from services.vocoder.model.layers import periodic_hann
from tests.reference.hift import legacy_weight_norm_keys

TOLERANCE = 1e-4


def _official(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in reference.state_dict().items()}


def _with_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A HiFiGan training wrapper saves the generator under `generator.`.
    return {f"generator.{key}": value for key, value in state.items()}


CHECKPOINT_STYLES: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "parametrizations": lambda state: state,
    "weight_g_v": legacy_weight_norm_keys,
    "generator_prefix": _with_wrapper_prefix,
    "generator_prefix_weight_g_v": lambda state: _with_wrapper_prefix(
        legacy_weight_norm_keys(state)
    ),
}


@pytest.fixture()
def ours(
    reference_hift: torch.nn.Module, make_model_dir: Callable[..., ModelDir]
) -> torch.nn.Module:
    return load_hift(make_model_dir(_official(reference_hift)))


@pytest.mark.parametrize("style", sorted(CHECKPOINT_STYLES))
def test_every_checkpoint_style_loads_to_the_same_waveform(
    style: str, reference_hift: torch.nn.Module, make_model_dir: Callable[..., ModelDir],
    mel: torch.Tensor,
) -> None:
    model = load_hift(make_model_dir(CHECKPOINT_STYLES[style](_official(reference_hift))))
    torch.manual_seed(3)
    expected, source = reference_hift.inference(speech_feat=mel)
    waveform, _ = model.inference(mel, source=source)
    assert waveform.shape == expected.shape == (1, mel.shape[2] * 480)
    assert (waveform - expected).abs().max().item() <= TOLERANCE


def test_seeded_generator_reproduces_the_reference_global_rng(
    ours: torch.nn.Module, reference_hift: torch.nn.Module, mel: torch.Tensor
) -> None:
    torch.manual_seed(21)
    expected, expected_source = reference_hift.inference(speech_feat=mel)
    waveform, source = ours.inference(mel, generator=torch.Generator().manual_seed(21))
    assert torch.equal(source, expected_source)  # bit for bit, not just close
    assert (waveform - expected).abs().max().item() <= TOLERANCE


def test_same_seed_same_output_and_other_seed_differs(
    ours: torch.nn.Module, mel: torch.Tensor
) -> None:
    first, _ = ours.inference(mel, generator=torch.Generator().manual_seed(4))
    again, _ = ours.inference(mel, generator=torch.Generator().manual_seed(4))
    other, _ = ours.inference(mel, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_cache_source_overwrites_the_start_of_the_excitation(
    ours: torch.nn.Module, reference_hift: torch.nn.Module, mel: torch.Tensor
) -> None:
    cache = 0.3 * torch.randn(1, 1, 3840, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(6)
    expected, expected_source = reference_hift.inference(speech_feat=mel, cache_source=cache)
    waveform, source = ours.inference(
        mel, cache_source=cache, generator=torch.Generator().manual_seed(6)
    )
    assert torch.equal(source[:, :, :3840], cache)
    assert torch.equal(source, expected_source)
    assert (waveform - expected).abs().max().item() <= TOLERANCE


def test_f0_predictor_alone(
    ours: torch.nn.Module, reference_hift: torch.nn.Module, mel: torch.Tensor
) -> None:
    with torch.inference_mode():
        expected = reference_hift.f0_predictor(mel)
        f0 = ours.f0_predictor(mel)
    assert f0.shape == (1, mel.shape[2])
    assert (f0 - expected).abs().max().item() <= TOLERANCE
    # The fixture's weights put frames on both sides of the voicing threshold.
    assert (expected > 10).any() and (expected <= 10).any()


def test_source_module_alone(ours: torch.nn.Module, reference_hift: torch.nn.Module) -> None:
    f0 = torch.tensor([[0.0, 5.0, 80.0, 120.5, 260.0, 9.9, 11.0, 440.0]])
    with torch.inference_mode():
        torch.manual_seed(17)
        upsampled = reference_hift.f0_upsamp(f0[:, None]).transpose(1, 2)
        expected, _, _ = reference_hift.m_source(upsampled)
        noise = ours.m_source.draw_noise(f0, torch.Generator().manual_seed(17))
        source = ours.m_source(f0, noise)
    assert source.shape == (1, 1, 8 * 480)
    assert torch.equal(source, expected.transpose(1, 2))


def test_batch_with_per_item_generators_matches_single_runs(ours: torch.nn.Module) -> None:
    mels = torch.randn(3, 80, 10, generator=torch.Generator().manual_seed(2))
    seeds = [10, 11, 12]
    batch, batch_source = ours.inference(
        mels, generator=[torch.Generator().manual_seed(s) for s in seeds]
    )
    for row, seed in enumerate(seeds):
        single, single_source = ours.inference(
            mels[row : row + 1], generator=torch.Generator().manual_seed(seed)
        )
        # Batched convolutions sum in another order; f0's last bits then drift the phase.
        assert (batch_source[row] - single_source[0]).abs().max().item() <= TOLERANCE
        assert (batch[row] - single[0]).abs().max().item() <= TOLERANCE


def test_batch_with_one_generator_matches_the_reference_batch(
    ours: torch.nn.Module, reference_hift: torch.nn.Module
) -> None:
    mels = torch.randn(2, 80, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(30)
    expected, _ = reference_hift.inference(speech_feat=mels)
    waveform, _ = ours.inference(mels, generator=torch.Generator().manual_seed(30))
    assert (waveform - expected).abs().max().item() <= TOLERANCE


def test_periodic_hann_equals_scipy() -> None:
    expected = torch.from_numpy(get_window("hann", 16, fftbins=True).astype("float32"))
    assert torch.equal(periodic_hann(16), expected)


def test_weights_are_plain_and_window_is_not_state(ours: torch.nn.Module) -> None:
    from torch.nn.utils import parametrize

    assert not any(parametrize.is_parametrized(module) for module in ours.modules())
    assert not any("parametrizations" in key or "stft_window" in key for key in ours.state_dict())


def test_float64_copy_agrees(ours: torch.nn.Module, mel: torch.Tensor) -> None:
    waveform, source = ours.inference(mel, generator=torch.Generator().manual_seed(1))
    wide = ours.to(torch.float64)
    try:
        wide_waveform, _ = wide.inference(mel, source=source)
    finally:
        ours.to(torch.float32)
    assert wide_waveform.dtype == torch.float32  # audio always comes back as float32
    assert (wide_waveform - waveform).abs().max().item() <= TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copy_matches_the_cpu_reference(
    ours: torch.nn.Module, reference_hift: torch.nn.Module, mel: torch.Tensor
) -> None:
    # TF32 convolutions would add ~5e-5 of their own; compare the arithmetic, not the mode.
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(9)
        expected, source = reference_hift.inference(speech_feat=mel)
        waveform, _ = ours.to("cuda").inference(mel.cuda(), source=source.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert waveform.device.type == "cuda"
    assert (waveform.cpu() - expected).abs().max().item() <= TOLERANCE
