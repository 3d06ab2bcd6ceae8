"""CosyVoice 2's CausalConditionalDecoder: the CFM velocity field, a one-level causal 1-D U-Net.

Causal convs + chunked attention make frame i depend only on frames up to the end of its
50-frame chunk when streaming, and padding never reaches a valid frame: every conv is causal
and padding keys are masked, so a padded batch gives each item its unpadded result.
"""

from __future__ import annotations

import torch
from torch import nn

from services.flow.model.config import EstimatorConfig
from services.flow.model.estimator_blocks import (
    CausalBlock1D,
    CausalConv1d,
    CausalResnetBlock1D,
    TimestepEmbedding,
    TransformerBlock,
    sinusoidal_time_embedding,
)
from services.flow.model.masks import attention_mask, batch_flags
from services.flow.model.window_cache import LayerCache


class CausalConditionalDecoder(nn.Module):
    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        self.config = config
        channels, time_dim = config.channels, config.time_embed_dim

        def transformers() -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(channels, config.num_heads, config.attention_head_dim, config.act_fn)
                for _ in range(config.n_blocks)
            )

        self.time_mlp = TimestepEmbedding(config.in_channels, time_dim)
        # [resnet, transformer blocks, causal conv] per level; CosyVoice 2 has one level, whose
        # "downsample"/"upsample" slots hold a stride-1 causal conv.
        self.down_blocks = nn.ModuleList([
            nn.ModuleList([CausalResnetBlock1D(config.in_channels, channels, time_dim), transformers(),
                           CausalConv1d(channels, channels, 3)])
        ])
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([CausalResnetBlock1D(channels, channels, time_dim), transformers()])
            for _ in range(config.num_mid_blocks)
        )
        self.up_blocks = nn.ModuleList([
            nn.ModuleList([CausalResnetBlock1D(2 * channels, channels, time_dim), transformers(),
                           CausalConv1d(channels, channels, 3)])
        ])
        self.final_block = CausalBlock1D(channels, channels)
        self.final_proj = nn.Conv1d(channels, config.out_channels, 1)

    def attention_mask(self, mask: torch.Tensor, streaming: bool | torch.Tensor) -> torch.Tensor | None:
        """The transformer mask for a (B, 1, T) padding mask: chunked per streaming item."""
        flags = batch_flags(streaming, mask.size(0), "streaming")
        lengths = mask[:, 0].sum(dim=-1).long()
        return attention_mask(lengths, mask.size(-1), self.config.static_chunk_size, flags)

    def time_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_mlp(sinusoidal_time_embedding(t, self.config.in_channels).to(dtype))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool | torch.Tensor = False,
    ) -> torch.Tensor:
        """The reference's signature: x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80)."""
        return self.velocity(
            x, mask, mu, self.time_embedding(t, t.dtype), spks, cond, self.attention_mask(mask, streaming)
        )

    def velocity(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        time_emb: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """forward() with the time embedding and attention mask precomputed (the CFM loop
        reuses the mask for all steps); `time_emb` may have one row for the whole batch.
        With `cache`, the inputs are a window after the cached frames (see WindowCache) and
        attn_mask covers the window's queries over cached + window keys."""
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.size(-1)), cond], dim=1)

        resnet, blocks, conv = self.down_blocks[0]
        h = self._transformers(resnet(h, mask, time_emb, cache), blocks, attn_mask, cache)
        skip = h
        h = conv(h * mask, cache)
        for resnet, blocks in self.mid_blocks:
            h = self._transformers(resnet(h, mask, time_emb, cache), blocks, attn_mask, cache)
        resnet, blocks, conv = self.up_blocks[0]
        h = self._transformers(resnet(torch.cat([h, skip], dim=1), mask, time_emb, cache), blocks, attn_mask,
                               cache)
        h = conv(h * mask, cache)
        h = self.final_block(h, mask, cache)
        return self.final_proj(h * mask) * mask

    @staticmethod
    def _transformers(
        h: torch.Tensor, blocks: nn.ModuleList, attn_mask: torch.Tensor | None, cache: LayerCache | None = None
    ) -> torch.Tensor:
        h = h.transpose(1, 2).contiguous()
        for block in blocks:
            h = block(h, attn_mask, cache)
        return h.transpose(1, 2).contiguous()
