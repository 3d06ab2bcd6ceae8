"""Building blocks of the upsample conformer encoder (module names follow flow.pt's keys)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from services.flow.model.window_cache import LayerCache

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "selu": nn.SELU,
    "hardtanh": nn.Hardtanh,
}


def relative_position_table(
    length: int, d_model: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """ESPnet's "new" relative positional encoding for `length` frames: (1, 2*length - 1, d_model).

    Row k encodes the relative position (length - 1 - k): positive offsets (key left of the
    query) first, largest first, then the negative ones. Computed in float32 like the
    reference's table and only then cast, so the values match it bit for bit.
    """
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )
    positive = torch.empty(length, d_model, device=device)
    negative = torch.empty(length, d_model, device=device)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-1 * position * div_term)
    negative[:, 1::2] = torch.cos(-1 * position * div_term)
    table = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0)
    return table.unsqueeze(0).to(dtype)


class LinearEmbed(nn.Module):
    """Linear → LayerNorm → × sqrt(d): the encoder's `embed` / `up_embed` (no subsampling).

    The reference's positional-encoding step only scales x; the rel-pos table it returns is
    built by the encoder itself here.
    """

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        # `out.0` / `out.1` as in the checkpoint (the reference's out.2 is a dropout).
        self.out = nn.ModuleList([nn.Linear(input_size, output_size), nn.LayerNorm(output_size, eps=1e-5)])
        self.xscale = math.sqrt(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out[1](self.out[0](x)) * self.xscale


class RelPositionAttention(nn.Module):
    """Transformer-XL style self-attention: (q + u)·kᵀ + rel_shift((q + v)·pᵀ), over sqrt(d_k)."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True) -> None:
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, H, d_k)
        return x.view(x.size(0), -1, self.h, self.d_k)

    @staticmethod
    def _rel_shift(scores: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """(B, H, W, 2T-1) indexed by table row → (B, H, W, T) indexed by key position, for the
        queries at positions offset .. offset+W-1 of a length-T table (W = T, offset 0: all).

        Entry (i, j) needs relative position (offset + i) - j, i.e. table row T-1-offset-i+j: a
        strided view (row stride 2T-2, starting at column T-1-offset) instead of the
        reference's pad-and-reshape.
        """
        b, h, w, width = scores.shape
        t = (width + 1) // 2
        scores = scores.contiguous()
        return scores.as_strided(
            (b, h, w, t),
            (h * w * width, w * width, width - 1, 1),
            scores.storage_offset() + t - 1 - offset,
        )

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """x: the frames at positions offset.. (with `cache` holding the keys/values of the
        frames before them); pos_emb: the table for the whole length."""
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        if cache is not None:
            k, v = cache.keys_values(self, k, v)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1, H, 2T-1, d_k)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = self._rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)), offset)
        scores = (content + position) / math.sqrt(self.d_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, -float("inf"))
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.size(0), -1, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int, activation: str) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.activation = _ACTIVATIONS[activation]()
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-LN conformer layer as CosyVoice 2 configures it: no macaron FF, no conv module."""

    def __init__(self, size: int, heads: int, linear_units: int, activation: str, key_bias: bool) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, size, key_bias)
        self.feed_forward = FeedForward(size, linear_units, activation)
        self.norm_ff = nn.LayerNorm(size, eps=1e-12)
        self.norm_mha = nn.LayerNorm(size, eps=1e-12)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, mask, cache, offset)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """conv1 (k = look-ahead + 1) over each frame and the frames after it, then a causal conv2."""

    def __init__(self, channels: int, pre_lookahead_len: int) -> None:
        super().__init__()
        self.pre_lookahead_len = pre_lookahead_len
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=pre_lookahead_len + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) whose positions past each item's look-ahead context are already zero.

        Output position i reads x[i : i + look-ahead + 1]; the caller decides whether the
        frames after an item's main part are its withheld context tokens or zeros (finalize).
        """
        h = F.pad(x.transpose(1, 2), (0, self.pre_lookahead_len))
        h = F.leaky_relu(self.conv1(h))
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))
        return h.transpose(1, 2) + x


class CausalUpsample(nn.Module):
    """Nearest-neighbour × stride, then a causal conv (k = 2·stride + 1, left-padded)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, C, stride*T); with `cache`, x continues the frames cached before."""
        x = torch.repeat_interleave(x, self.stride, dim=2)
        if cache is not None:
            return self.conv(cache.conv_input(self, x, self.stride * 2))
        return self.conv(F.pad(x, (self.stride * 2, 0)))
