"""Building blocks of the causal conditional estimator (module names follow flow.pt's keys).

Several containers are index-addressed in the checkpoint (`block.0`, `block.2`, `mlp.1`,
`to_out.0`, `ff.net.0.proj`, `ff.net.2`) because the reference builds them as Sequentials
with parameter-free layers in between; nn.Identity fills those slots here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from services.flow.model.window_cache import LayerCache


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) diffusion times → (B, dim) [sin, cos] features (Matcha's SinusoidalPosEmb)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    args = scale * t.reshape(-1).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((args.sin(), args.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class CausalConv1d(nn.Conv1d):
    """Conv1d whose output frame i reads input frames i-k+1 .. i (left zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.causal_padding = kernel_size - 1

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        if cache is not None:  # the cached inputs before the window replace the zero padding
            return super().forward(cache.conv_input(self, x, self.causal_padding))
        return super().forward(F.pad(x, (self.causal_padding, 0)))


class CausalBlock1D(nn.Module):
    """mask → causal conv (k3) → LayerNorm over channels → Mish → mask."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([CausalConv1d(dim, dim_out, 3), nn.Identity(), nn.LayerNorm(dim_out)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        h = self.block[0](x * mask, cache)
        h = self.block[2](h.transpose(1, 2)).transpose(1, 2)
        return F.mish(h) * mask


class CausalResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor, cache: LayerCache | None = None
    ) -> torch.Tensor:
        h = self.block1(x, mask, cache) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h, mask, cache) + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """diffusers' Attention as Matcha configures it: q/k/v without bias, SDPA, output proj."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        k, v = heads(self.to_k(x)), heads(self.to_v(x))
        if cache is not None:
            k, v = cache.keys_values(self, k, v)
        out = F.scaled_dot_product_attention(heads(self.to_q(x)), k, v, attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class GELUProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, act_fn: str, mult: int = 4) -> None:
        super().__init__()
        approximate = "tanh" if act_fn == "gelu-approximate" else "none"
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult, approximate), nn.Identity(),
                                  nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Matcha's BasicTransformerBlock as used here: pre-LN self-attention + pre-LN GELU FF."""

    def __init__(self, dim: int, heads: int, head_dim: int, act_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, act_fn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), mask, cache)
        return x + self.ff(self.norm3(x))
