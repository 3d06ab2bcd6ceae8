"""CosyVoice2's HiFT generator (non-causal): 80-bin mel at 50 Hz → 24 kHz waveform.

f0 predictor → NSF source excitation → its STFT feeds every upsample stage of a HiFiGAN-style
decoder (conv_pre, 3 transposed-conv stages with Snake resblocks) → conv_post predicts log
magnitude and phase of a 16-point spectrum → iSTFT (hop 4). Module and parameter names mirror
the reference so state-dict keys line up; weight-normed layers hold their folded weight.
"""

from __future__ import annotations

from itertools import accumulate
from operator import mul

import torch
import torch.nn.functional as F
from torch import nn

from services.vocoder.model.config import F0PredictorConfig, HiFTConfig
from services.vocoder.model.layers import (
    ResBlock,
    SpectralTransform,
    init_conv_weight,
    stored_weight_normed,
)
from services.vocoder.model.source import GeneratorArg, SourceModuleHnNSF


class VocoderInputError(ValueError):
    """A tensor handed to the vocoder with the wrong shape; the message names the argument."""


# Hard-coded in the reference class: 5 convolutions of kernel 3, each followed by ELU.
_NUM_CONV_LAYERS = 5
_KERNEL_SIZE = 3


class ConvRNNF0Predictor(nn.Module):
    """Despite the name there is no RNN: a conv stack and a linear head, |·| for Hz ≥ 0."""

    def __init__(self, config: F0PredictorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(_NUM_CONV_LAYERS):
            layers.append(stored_weight_normed(
                nn.Conv1d(channels, config.cond_channels, _KERNEL_SIZE, padding=_KERNEL_SIZE // 2)
            ))
            layers.append(nn.ELU())  # odd indices, so the convs keep the keys condnet.{0,2,4,6,8}
            channels = config.cond_channels
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(config.cond_channels, config.num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(hidden).squeeze(-1))


class HiFTGenerator(nn.Module):
    """The v2 generator; `inference` is the entry point, batched over requests of equal length.

    Holds no per-request state: streaming caches live in `VocoderStream`, randomness comes from
    the caller's generators.
    """

    def __init__(self, config: HiFTConfig, f0_predictor: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.spectral = SpectralTransform(config.n_fft, config.hop_len)
        base, spectrum = config.base_channels, config.spectrum_channels
        stage_channels = [base // 2 ** (i + 1) for i in range(len(config.upsample_rates))]

        self.m_source = SourceModuleHnNSF(config)
        self.conv_pre = stored_weight_normed(nn.Conv1d(config.in_channels, base, 7, padding=3))
        self.ups = nn.ModuleList(
            stored_weight_normed(nn.ConvTranspose1d(
                base // 2 ** i, channels, kernel, rate, padding=(kernel - rate) // 2
            ))
            for i, (rate, kernel, channels) in enumerate(
                zip(config.upsample_rates, config.upsample_kernel_sizes, stage_channels)
            )
        )
        # Stage i sees the source spectrum downsampled to its own frame rate: the product of the
        # upsample rates still to come (15, 3, 1 for CosyVoice2).
        remaining = list(accumulate([1, *config.upsample_rates[:0:-1]], mul))[::-1]
        self.source_downs = nn.ModuleList(
            nn.Conv1d(spectrum, channels, 1) if stride == 1
            else nn.Conv1d(spectrum, channels, stride * 2, stride, padding=stride // 2)
            for stride, channels in zip(remaining, stage_channels)
        )
        self.source_resblocks = nn.ModuleList(
            ResBlock(channels, kernel, dilations)
            for channels, kernel, dilations in zip(
                stage_channels, config.source_resblock_kernel_sizes,
                config.source_resblock_dilation_sizes,
            )
        )
        self.resblocks = nn.ModuleList(
            ResBlock(channels, kernel, dilations)
            for channels in stage_channels
            for kernel, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes
            )
        )
        self.conv_post = stored_weight_normed(nn.Conv1d(stage_channels[-1], spectrum, 7, padding=3))
        for layer in (*self.ups, self.conv_post):
            init_conv_weight(layer)
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        self.f0_predictor = f0_predictor
        # An exported-graph backend (services/vocoder/backends) standing in for `network`:
        # backend(mel, source_spectrum) -> spectrum; None runs the torch layers.
        self.network_backend = None

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def device(self) -> torch.device:
        return self.conv_pre.weight.device

    def generate_source(self, mel: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        """mel (B, C, T) → source excitation (B, 1, T · samples_per_frame)."""
        f0 = self.f0_predictor(mel)
        return self.m_source(f0, self.m_source.draw_noise(f0, generator))

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel (B, C, T) and source (B, 1, N) → waveform (B, N) float32, N = T · 480."""
        source_spec = self.spectral.analyze(source.squeeze(1)).to(mel.dtype)
        if self.network_backend is not None:
            x = self.network_backend(mel, source_spec)
        else:
            x = self.network(mel, source_spec)
        bins = self.spectral.num_bins
        # sin() of a phase angle is redundant but it is what the model was trained with.
        wave = self.spectral.synthesize(torch.exp(x[:, :bins]), torch.sin(x[:, bins:]))
        return torch.clamp(wave, -self.config.audio_limit, self.config.audio_limit)

    def network(self, mel: torch.Tensor, source_spec: torch.Tensor) -> torch.Tensor:
        """The neural part: mel (B, C, T) and the source's STFT (B, n_fft + 2, T·120 + 1) →
        log-magnitude and phase-angle channels (B, n_fft + 2, T·120 + 1)."""
        inplace = not torch.is_grad_enabled()  # saves copies; autograd would need the originals
        x = self.conv_pre(mel)
        last = len(self.ups) - 1
        for i, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, self.config.lrelu_slope, inplace=inplace))
            if i == last:
                x = self.reflection_pad(x)
            source_branch = self.source_resblocks[i](self.source_downs[i](source_spec))
            x = source_branch.add_(x) if inplace else source_branch + x
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            summed = blocks[0](x)
            for block in blocks[1:]:
                summed = summed.add_(block(x)) if inplace else summed + block(x)
            x = summed.div_(self.num_kernels) if inplace else summed / self.num_kernels
        # The reference uses leaky_relu's default slope (0.01) here, not lrelu_slope.
        return self.conv_post(F.leaky_relu(x, inplace=inplace))

    @torch.inference_mode()
    def inference(
        self,
        mel: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        generator: GeneratorArg = None,
        source: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, C, T) → (waveform (B, T·480) float32, source excitation (B, 1, T·480)).

        cache_source (B, 1, L) overwrites the first L source samples (streaming continuity).
        generator: one for the batch, one per item, or None for the global RNG (reference).
        source (B, 1, T·480) replaces the generated excitation (parity tests, replays).
        """
        weight = self.conv_pre.weight  # where the model lives, and in which dtype
        mel = self._check_mel(mel).to(device=weight.device, dtype=weight.dtype)
        batch, num_samples = mel.shape[0], mel.shape[2] * self.samples_per_frame
        if source is None:
            source = self.generate_source(mel, generator)
        else:
            _check_signal("source", source, batch, num_samples, exact=True)
            source = source.to(device=weight.device, dtype=weight.dtype)
        if cache_source is not None and cache_source.shape[-1] > 0:
            _check_signal("cache_source", cache_source, batch, num_samples, exact=False)
            source = source.clone()
            source[:, :, :cache_source.shape[-1]] = cache_source.to(source)
        return self.decode(mel, source), source

    def _check_mel(self, mel: torch.Tensor) -> torch.Tensor:
        channels = self.config.in_channels
        if mel.dim() != 3 or mel.shape[1] != channels or mel.shape[2] == 0 or mel.shape[0] == 0:
            raise VocoderInputError(
                f"mel must have shape (batch, {channels}, frames ≥ 1), got {tuple(mel.shape)}"
            )
        return mel


def _check_signal(
    name: str, signal: torch.Tensor, batch: int, num_samples: int, exact: bool
) -> None:
    length_ok = signal.dim() == 3 and (
        signal.shape[2] == num_samples if exact else signal.shape[2] <= num_samples
    )
    if not length_ok or signal.shape[0] != batch or signal.shape[1] != 1:
        bound = "" if exact else "≤"
        raise VocoderInputError(
            f"{name} must have shape ({batch}, 1, {bound}{num_samples}) for this mel, "
            f"got {tuple(signal.shape)}"
        )
