"""CosyVoice 2's UpsampleConformerEncoder: 25 Hz token embeddings → 50 Hz hidden frames.

Batched over padded inputs. Each item's valid tokens include, when it is not finalizing, the
`pre_lookahead_len` withheld tokens at its end: they are embedded like the rest but only feed
the look-ahead conv, and the item's output covers the tokens before them. The reference takes
those tokens as a separate `context` tensor, which only works for a batch of one.
"""

from __future__ import annotations

import torch
from torch import nn

from services.flow.model.config import (
    REFERENCE_ENCODER_CHANNELS,
    REFERENCE_NUM_UP_BLOCKS,
    REFERENCE_PRE_LOOKAHEAD_LEN,
    REFERENCE_UPSAMPLE_STRIDE,
    EncoderConfig,
)
from services.flow.model.encoder_layers import (
    CausalUpsample,
    ConformerLayer,
    LinearEmbed,
    PreLookaheadLayer,
    relative_position_table,
)
from services.flow.model.masks import (
    FlowInputError,
    attention_mask,
    batch_flags,
    length_mask,
    window_attention_mask,
)
from services.flow.model.window_cache import WindowCache


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        size = config.output_size
        channels = REFERENCE_ENCODER_CHANNELS  # hard-coded in the reference (= size, checked)

        def layers(count: int) -> nn.ModuleList:
            return nn.ModuleList(
                ConformerLayer(size, config.attention_heads, config.linear_units, config.activation_type,
                               config.key_bias)
                for _ in range(count)
            )

        self.embed = LinearEmbed(config.input_size, size)
        self.pre_lookahead_layer = PreLookaheadLayer(channels, REFERENCE_PRE_LOOKAHEAD_LEN)
        self.encoders = layers(config.num_blocks)
        self.up_layer = CausalUpsample(channels, REFERENCE_UPSAMPLE_STRIDE)
        self.up_embed = LinearEmbed(config.input_size, size)
        self.up_encoders = layers(REFERENCE_NUM_UP_BLOCKS)  # the reference hard-codes 4
        self.after_norm = nn.LayerNorm(size, eps=1e-5)

    @property
    def pre_lookahead_len(self) -> int:
        return self.pre_lookahead_layer.pre_lookahead_len

    @property
    def stride(self) -> int:
        return self.up_layer.stride

    def forward(
        self,
        xs: torch.Tensor,
        xs_lens: torch.Tensor,
        streaming: bool | torch.Tensor = False,
        finalize: bool | torch.Tensor = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, input_size) token embeddings; xs_lens: (B,) valid tokens per item,
        look-ahead context included. Returns (B, stride·T_main, size) frames and their lengths.

        `streaming` (chunk masks of static_chunk_size tokens, ×stride frames after the
        upsample) and `finalize` (zeros instead of withheld tokens as look-ahead) are per item.
        """
        batch = xs.size(0)
        streaming_flags = batch_flags(streaming, batch, "streaming")
        finalize_flags = batch_flags(finalize, batch, "finalize")
        main_lens = xs_lens - (~finalize_flags).to(xs_lens.device, xs_lens.dtype) * self.pre_lookahead_len
        if bool((main_lens < 1).any()):
            raise FlowInputError(
                f"xs_lens: every item needs more than {self.pre_lookahead_len} tokens when not "
                f"finalizing and at least 1 when finalizing, got {xs_lens.tolist()}"
            )
        main_len = int(main_lens.max())

        # Zero every position past each item's valid tokens: that is exactly the reference's
        # look-ahead input (main + context, or main + zeros when finalizing), item by item.
        valid = length_mask(xs_lens, xs.size(1)).unsqueeze(-1)
        x = self.embed(xs) * valid
        x = self.pre_lookahead_layer(x)[:, :main_len]
        x = self._conformer(x, main_lens, self.encoders, self.config.static_chunk_size, streaming_flags)

        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        up_lens = main_lens * self.stride
        x = self.up_embed(x)
        x = self._conformer(
            x, up_lens, self.up_encoders, self.config.static_chunk_size * self.stride, streaming_flags
        )
        return self.after_norm(x), up_lens

    def forward_window(
        self, xs: torch.Tensor, start: int, main: int, token_cache: WindowCache, frame_cache: WindowCache
    ) -> torch.Tensor:
        """One stream's non-final streaming frames for tokens [start, main), `start` on a chunk
        boundary with everything before it in the caches. xs: (1, main + look-ahead - s,
        input_size) embeddings of tokens s.. with s = max(0, start - 2), since the look-ahead
        layer's causal conv2 reads two earlier positions (recomputed rather than cached).
        Returns (1, stride·(main - start), size); the caller commits the caches.
        """
        first = max(0, start - 2)
        x = self.pre_lookahead_layer(self.embed(xs))[:, start - first : main - first]
        chunk = self.config.static_chunk_size
        x = self._conformer_window(x, start, main, self.encoders, chunk, token_cache)
        x = self.up_layer(x.transpose(1, 2), frame_cache).transpose(1, 2)
        x = self.up_embed(x)
        x = self._conformer_window(
            x, start * self.stride, main * self.stride, self.up_encoders, chunk * self.stride, frame_cache
        )
        return self.after_norm(x)

    @staticmethod
    def _conformer_window(
        x: torch.Tensor, start: int, length: int, layers: nn.ModuleList, chunk_size: int, cache: WindowCache
    ) -> torch.Tensor:
        pos_emb = relative_position_table(length, x.size(2), x.device, x.dtype)
        mask = window_attention_mask(start, length, chunk_size, x.device)
        for layer in layers:
            x = layer(x, pos_emb, mask, cache, start)
        return x

    def _conformer(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        layers: nn.ModuleList,
        chunk_size: int,
        streaming: torch.Tensor,
    ) -> torch.Tensor:
        length = x.size(1)
        pos_emb = relative_position_table(length, x.size(2), x.device, x.dtype)
        # A static chunk size of 0 means "no chunking" in the reference, streaming or not.
        streaming = streaming & (chunk_size > 0)
        mask = attention_mask(lengths, length, max(chunk_size, 1), streaming)
        # Keep padding frames finite and quiet: they are masked as keys, but a NaN there
        # would still leak through the zero attention weights.
        pad = length_mask(lengths, length).unsqueeze(-1).to(x.dtype)
        x = x * pad
        for layer in layers:
            x = layer(x, pos_emb, mask)
        return x
