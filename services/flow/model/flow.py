"""CosyVoice 2's flow (CausalMaskedDiffWithXvec): speech tokens + prompt → mel, batched.

One call re-processes the prompt and every token of the utterance so far (the reference keeps
no flow cache); streaming consistency comes from causal convs, chunk masks counted from the
start of the prompt, and the fixed start noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from services.flow.model.cfm import CausalConditionalCFM
from services.flow.model.config import FlowConfig
from services.flow.model.encoder import UpsampleConformerEncoder
from services.flow.model.estimator import CausalConditionalDecoder
from services.flow.model.masks import FlowInputError, batch_flags, length_mask

Flags = bool | Sequence[bool] | torch.Tensor


def concat_padded(
    first: torch.Tensor, first_len: torch.Tensor, second: torch.Tensor, second_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, first[:first_len] followed by second[:second_len], right-padded with zeros.
    Works on (B, T, ...) tensors; either part may have zero width."""
    both = torch.cat([first, second], dim=1)
    lengths = first_len + second_len
    width = max(int(lengths.max()), 1)
    position = torch.arange(width, device=both.device).unsqueeze(0)
    source = torch.where(position < first_len.unsqueeze(1), position,
                         position - first_len.unsqueeze(1) + first.size(1))
    source = source.clamp(0, max(both.size(1) - 1, 0))
    index = source.view(*source.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
    out = torch.gather(both, 1, index)
    valid = length_mask(lengths, width).view(*source.shape, *([1] * (both.dim() - 2)))
    return out * valid.to(out.dtype), lengths


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = UpsampleConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.decoder = CausalConditionalCFM(
            CausalConditionalDecoder(config.estimator), config.inference_cfg_rate, config.t_scheduler
        )

    @property
    def pre_lookahead_len(self) -> int:
        return self.config.pre_lookahead_len

    @property
    def token_mel_ratio(self) -> int:
        return self.config.token_mel_ratio

    def output_lengths(
        self,
        token_len: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat_len: torch.Tensor,
        finalize: Flags,
    ) -> torch.Tensor:
        """Mel frames `inference` returns per item: ratio × (prompt + target tokens, minus the
        look-ahead when not finalizing) − prompt frames."""
        flags = batch_flags(finalize, token_len.size(0), "finalize").to(token_len.device)
        tokens = prompt_token_len + token_len - (~flags).long() * self.pre_lookahead_len
        return tokens * self.token_mel_ratio - prompt_feat_len

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        prompt_feat_len: torch.Tensor,
        embedding: torch.Tensor,
        streaming: Flags,
        finalize: Flags,
    ) -> torch.Tensor:
        """Mel (B, 80, T_out) float32 for the target tokens, zero past each item's
        `output_lengths`.

        token (B, T) / prompt_token (B, P): speech tokens, right-padded; *_len: (B,) valid
        counts. prompt_feat (B, F, 80): the prompt's mel, 2 frames per prompt token.
        embedding (B, 192): the CAM++ x-vector (L2-normalised here). streaming: chunked
        attention; finalize: False withholds each item's last 3 tokens as look-ahead. The
        reference passes streaming=True, finalize=False for every chunk but the last, then
        streaming=False, finalize=True. Both flags may be given per item.
        """
        param = self.spk_embed_affine_layer.weight
        device, dtype = param.device, param.dtype
        batch = token.size(0)
        token, token_len, prompt_token, prompt_token_len, prompt_feat_len = (
            tensor.to(device)
            for tensor in (token, token_len, prompt_token, prompt_token_len, prompt_feat_len)
        )
        self._check_inputs(token, token_len, prompt_token, prompt_token_len, prompt_feat, prompt_feat_len,
                           embedding)
        streaming_flags = batch_flags(streaming, batch, "streaming")
        finalize_flags = batch_flags(finalize, batch, "finalize")
        withheld = (~finalize_flags).to(device).long() * self.pre_lookahead_len
        if bool((prompt_token_len + token_len - withheld < 1).any()):
            raise FlowInputError(
                f"token_len: prompt + target tokens must exceed the {self.pre_lookahead_len} look-ahead "
                f"tokens of a non-final call (and be >= 1 for a final one); got prompt_token_len "
                f"{prompt_token_len.tolist()}, token_len {token_len.tolist()}"
            )

        spks = self.spk_embed_affine_layer(F.normalize(embedding.to(device, dtype), dim=1))
        tokens, lengths = concat_padded(prompt_token, prompt_token_len, token, token_len)
        valid = length_mask(lengths, tokens.size(1)).unsqueeze(-1)
        x = self.input_embedding(tokens.clamp(min=0).long()) * valid.to(dtype)
        h, h_lens = self.encoder(x, lengths, streaming_flags, finalize_flags)
        mu = self.encoder_proj(h).transpose(1, 2)  # (B, 80, T_h)
        frames = mu.size(2)
        if bool((prompt_feat_len > h_lens).any()):
            raise FlowInputError(
                f"prompt_feat_len {prompt_feat_len.tolist()} exceeds the frames the tokens make "
                f"({h_lens.tolist()}); the prompt mel must have 2 frames per prompt token"
            )

        feat = prompt_feat.to(device, dtype).transpose(1, 2)[:, :, :frames]
        feat = F.pad(feat, (0, frames - feat.size(2)))
        cond = feat * length_mask(prompt_feat_len, frames).unsqueeze(1).to(dtype)
        mask = length_mask(h_lens, frames).unsqueeze(1).to(dtype)
        mel = self.decoder(mu, mask, spks, cond, streaming_flags)
        return self._after_prompt(mel, prompt_feat_len, h_lens - prompt_feat_len)

    @staticmethod
    def _after_prompt(mel: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per item, mel[:, start : start + length], left-aligned and zero-padded."""
        width = int(lengths.max())
        position = torch.arange(width, device=mel.device).unsqueeze(0)
        source = (position + start.unsqueeze(1)).clamp(max=mel.size(2) - 1)
        out = torch.gather(mel, 2, source.unsqueeze(1).expand(-1, mel.size(1), -1))
        return out * length_mask(lengths, width).unsqueeze(1).to(out.dtype)

    def _check_inputs(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        prompt_feat_len: torch.Tensor,
        embedding: torch.Tensor,
    ) -> None:
        batch = token.size(0)
        expected = {
            "token": (token, 2, None),
            "prompt_token": (prompt_token, 2, None),
            "prompt_feat": (prompt_feat, 3, self.config.output_size),
            "embedding": (embedding, 2, self.config.spk_embed_dim),
        }
        for name, (tensor, ndim, last) in expected.items():
            wrong_last = last is not None and tensor.size(-1) != last
            if tensor.dim() != ndim or tensor.size(0) != batch or wrong_last:
                raise FlowInputError(
                    f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dims, batch {batch}"
                    + (f" and {last} features in the last dim" if last is not None else "")
                )
        for name, lengths, tensor in (
            ("token_len", token_len, token),
            ("prompt_token_len", prompt_token_len, prompt_token),
            ("prompt_feat_len", prompt_feat_len, prompt_feat),
        ):
            out_of_range = bool((lengths < 0).any()) or bool((lengths > tensor.size(1)).any())
            if lengths.shape != (batch,) or out_of_range:
                raise FlowInputError(
                    f"{name} must be (B,) = ({batch},) counts within 0..{tensor.size(1)}, "
                    f"got {lengths.tolist()}"
                )
