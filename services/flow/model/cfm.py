"""Conditional flow matching sampler: fixed-noise Euler ODE solve with classifier-free guidance.

No randomness at inference: every call starts from the first T frames of one fixed noise
tensor, the reference's `randn(1, 80, 15000)` drawn right after seeding 0. Reusing the same
prefix is what keeps the frames of successive streaming calls (same utterance, longer token
prefix) consistent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from services.flow.model.config import REFERENCE_N_TIMESTEPS, REFERENCE_NOISE_SHAPE
from services.flow.model.estimator import CausalConditionalDecoder
from services.flow.model.masks import FlowInputError, batch_flags, stacked_window_mask
from services.flow.model.window_cache import StackedWindowCaches, WindowCache

NOISE_SEED = 0


def reference_start_noise() -> torch.Tensor:
    """Bit-identical to the reference's `rand_noise`, from a local generator (the global RNG
    is untouched): a fresh CPU generator seeded 0 is exactly the state torch.manual_seed(0)
    leaves the default generator in."""
    generator = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
    return torch.randn(REFERENCE_NOISE_SHAPE, generator=generator, dtype=torch.float32)


def time_grid(n_timesteps: int, scheduler: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """n+1 times from 0 to 1; 'cosine' warps them to 1 - cos(t·π/2) (denser near t = 0)."""
    t_span = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
    if scheduler == "cosine":
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    return t_span


class CausalConditionalCFM(nn.Module):
    """Holds the estimator (the only parameters, under `decoder.estimator.`) and the noise."""

    def __init__(
        self, estimator: CausalConditionalDecoder, inference_cfg_rate: float, t_scheduler: str
    ) -> None:
        super().__init__()
        self.estimator = estimator
        self.inference_cfg_rate = inference_cfg_rate
        self.t_scheduler = t_scheduler
        # Not in flow.pt; non-persistent so it follows .to(device, dtype) without a key.
        self.register_buffer("rand_noise", reference_start_noise(), persistent=False)
        # An exported-graph backend (services/flow/backends) called as
        # backend(x, mask, mu, t, spks, cond, streaming) -> velocity; None runs the torch estimator.
        self.backend = None

    @property
    def max_frames(self) -> int:
        return self.rand_noise.size(2)

    @torch.inference_mode()
    def forward(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool | torch.Tensor = False,
        n_timesteps: int = REFERENCE_N_TIMESTEPS,
    ) -> torch.Tensor:
        """mu, cond: (B, 80, T); mask: (B, 1, T) ones over each item's frames; spks: (B, 80).
        Returns the sampled mel (B, 80, T) in float32, as the reference does."""
        frames = mu.size(2)
        if frames > self.max_frames:
            raise FlowInputError(
                f"mu: {frames} frames exceed the fixed noise's {self.max_frames} (300 s at 50 Hz)"
            )
        batch, dtype = mu.size(0), mu.dtype
        x = self.rand_noise[:, :, :frames].to(mu.device, dtype).expand(batch, -1, -1)
        t_span = time_grid(n_timesteps, self.t_scheduler, mu.device, dtype)

        # Classifier-free guidance as one double batch: rows [0, B) conditioned, rows [B, 2B)
        # with mu, spks and cond zeroed. Everything but x is constant over the steps.
        mask_in = torch.cat([mask, mask]).to(dtype)
        mu_in = torch.cat([mu, torch.zeros_like(mu)])
        spks_in = torch.cat([spks, torch.zeros_like(spks)]).to(dtype)
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(dtype)
        streaming_in = batch_flags(streaming, batch, "streaming").repeat(2)
        attn_mask = None if self.backend is not None else self.estimator.attention_mask(mask_in, streaming_in)

        rate = self.inference_cfg_rate
        # The reference steps t by accumulating dt (t += dt; dt = t_span[k+1] - t) rather than
        # reading t_span[k]; kept, since the float rounding differs.
        t, dt = t_span[0], t_span[1] - t_span[0]
        for step in range(1, len(t_span)):
            if self.backend is not None:
                velocity = self.backend(torch.cat([x, x]), mask_in, mu_in, t.reshape(1).expand(2 * batch),
                                        spks_in, cond_in, streaming_in)
            else:
                time_emb = self.estimator.time_embedding(t.reshape(1), dtype)
                velocity = self.estimator.velocity(torch.cat([x, x]), mask_in, mu_in, time_emb, spks_in, cond_in,
                                                   attn_mask)
            conditioned, unconditioned = velocity[:batch], velocity[batch:]
            x = x + dt * ((1.0 + rate) * conditioned - rate * unconditioned)
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x.float()

    @torch.inference_mode()
    def forward_window(
        self,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        start: int,
        caches: list[WindowCache],
        keep: int,
        n_timesteps: int = REFERENCE_N_TIMESTEPS,
    ) -> torch.Tensor:
        """One stream's streaming frames [start, start + W): mu, cond (1, 80, W); spks (1, 80);
        `start` on a chunk boundary, `caches[k]` holding step k's state of the frames before it.
        Same steps as forward; afterwards each cache keeps the window's first `keep` frames."""
        return self.forward_windows([mu[0]], [spks[0]], [cond[0]], [start], [caches], [keep], n_timesteps)[0][None]

    @torch.inference_mode()
    def forward_windows(
        self,
        mus: list[torch.Tensor],
        spks: list[torch.Tensor],
        conds: list[torch.Tensor],
        starts: list[int],
        caches: list[list[WindowCache]],
        keeps: list[int],
        n_timesteps: int = REFERENCE_N_TIMESTEPS,
    ) -> list[torch.Tensor]:
        """forward_window for several streams as one batch: per stream mu, cond (80, W_i),
        spks (80,), its window start, its per-step caches and how many window frames to keep.
        Windows are right-padded to the widest and cached keys to the longest; masks hide both,
        and causal convs never carry the padding left. Returns each stream's (80, W_i) float32."""
        widths = [mu.size(1) for mu in mus]
        if max(start + width for start, width in zip(starts, widths)) > self.max_frames:
            raise FlowInputError(f"mu: windows reach past the fixed noise's {self.max_frames} frames (300 s at 50 Hz)")
        if any(len(per_step) != n_timesteps for per_step in caches):
            raise FlowInputError(f"caches: one per step needed, {n_timesteps} steps")
        batch, width = len(mus), max(widths)
        dtype, device = mus[0].dtype, mus[0].device

        def padded(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([F.pad(p, (0, width - p.size(1))) for p in parts])

        noise = self.rand_noise[0].to(device, dtype)
        x = padded([noise[:, start : start + w] for start, w in zip(starts, widths)])
        mu, cond = padded(mus), padded(conds)
        valid = torch.arange(width, device=device).view(1, 1, -1) < torch.tensor(widths, device=device).view(-1, 1, 1)
        mask_in = torch.cat([valid, valid]).to(dtype)
        mu_in = torch.cat([mu, torch.zeros_like(mu)])
        spk = torch.stack(spks).to(dtype)
        spks_in = torch.cat([spk, torch.zeros_like(spk)])
        cond_in = torch.cat([cond, torch.zeros_like(cond)]).to(dtype)
        chunk = self.estimator.config.static_chunk_size
        attn_mask = stacked_window_mask(starts, widths, chunk, device).repeat(2, 1, 1, 1)  # both CFG halves
        t_span = time_grid(n_timesteps, self.t_scheduler, device, dtype)

        rate = self.inference_cfg_rate
        t, dt = t_span[0], t_span[1] - t_span[0]  # accumulated as in forward
        for step in range(1, len(t_span)):
            time_emb = self.estimator.time_embedding(t.reshape(1), dtype)
            step_caches = StackedWindowCaches([per_step[step - 1] for per_step in caches], widths)
            velocity = self.estimator.velocity(torch.cat([x, x]), mask_in, mu_in, time_emb, spks_in, cond_in,
                                               attn_mask, step_caches)
            x = x + dt * ((1.0 + rate) * velocity[:batch] - rate * velocity[batch:])
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        for per_step, keep in zip(caches, keeps):
            for cache in per_step:
                cache.commit(keep)
        return [x[i, :, :w].float() for i, w in enumerate(widths)]
