"""Our Qwen2 decoder, written for batched decode over a KV cache.

Numerics follow transformers' Qwen2 (the reference backbone): RMSNorm in float32, RoPE
rotate-half on [cos, cos] tables, GQA attention with q/k/v biases and a bias-free o_proj,
SiLU-gated MLP. Module names reproduce `Qwen2ForCausalLM`'s state-dict keys exactly, so the
official `llm.model.*` weights load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from services.common.modeldir.layout import ModelDirError
from services.llm.model.kv_cache import AttentionPlan, KVCache


class QwenConfigError(ModelDirError):
    """A `CosyVoice-BlankEN/config.json` we cannot build a backbone from."""


@dataclass(frozen=True)
class Qwen2Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> "Qwen2Config":
        def integer(key: str, default: int | None = None) -> int:
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QwenConfigError(f"{source}: '{key}' must be a positive integer, got {value!r}")
            return value

        def number(key: str, default: float) -> float:
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise QwenConfigError(f"{source}: '{key}' must be a positive number, got {value!r}")
            return float(value)

        if raw.get("hidden_act", "silu") != "silu":
            raise QwenConfigError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (silu)")
        scaling = raw.get("rope_scaling") or {}
        if scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise QwenConfigError(f"{source}: rope_scaling {scaling!r} is not supported")
        if raw.get("use_sliding_window", False):
            raise QwenConfigError(f"{source}: use_sliding_window=true is not supported")
        hidden = integer("hidden_size")
        heads = integer("num_attention_heads")
        kv_heads = integer("num_key_value_heads", heads)
        if heads % kv_heads:
            raise QwenConfigError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        # transformers: getattr(config, "head_dim", hidden_size // num_attention_heads)
        head_dim = raw.get("head_dim") or hidden // heads
        return cls(
            hidden_size=hidden,
            num_hidden_layers=integer("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            intermediate_size=integer("intermediate_size"),
            vocab_size=integer("vocab_size"),
            head_dim=int(head_dim),
            rms_norm_eps=number("rms_norm_eps", 1e-6),
            rope_theta=number("rope_theta", 10000.0),
            max_position_embeddings=integer("max_position_embeddings", 32768),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )


class Qwen2RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()  # the reference normalises in float32 whatever the model dtype
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; cos/sin [B, 1, T, head_dim]."""
    return x * cos + _rotate_half(x) * sin


class Qwen2Attention(nn.Module):
    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.group = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        plan: AttentionPlan,
        cache: KVCache,
    ) -> torch.Tensor:
        batch, width, _ = x.shape
        q = self.q_proj(x).view(batch, width, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        cache.write(self.layer_idx, plan, k, v)
        keys, values = cache.read(self.layer_idx, plan)
        # GQA without repeating K/V: the `group` query heads that share one KV head become
        # extra query rows of that head (their masks are identical), so SDPA sees
        # [B, kv_heads, group * T, head_dim] against [B, kv_heads, kv_len, head_dim].
        q = q.reshape(batch, self.num_kv_heads, self.group * width, self.head_dim)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=plan.grouped_mask(self.group), scale=self.scaling
        )
        out = out.reshape(batch, self.num_heads, width, self.head_dim).transpose(1, 2)
        return self.o_proj(out.reshape(batch, width, self.num_heads * self.head_dim))


class Qwen2MLP(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Qwen2Attention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: AttentionPlan, cache: KVCache
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, plan, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_rope_tables()

    def reset_rope_tables(self) -> None:
        """(Re)compute the RoPE tables in float32, e.g. after materialising from meta."""
        dim, theta = self.config.head_dim, self.config.rope_theta
        device, dtype = self.embed_tokens.weight.device, self.embed_tokens.weight.dtype
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)
        )
        positions = torch.arange(self.config.max_position_embeddings, device=device).float()
        freqs = torch.outer(positions, inv_freq)
        table = torch.cat((freqs, freqs), dim=-1)
        # Computed in float32 and then cast, like the reference does per call.
        self.rope_cos = table.cos().to(dtype)
        self.rope_sin = table.sin().to(dtype)

    def forward(self, inputs_embeds: torch.Tensor, plan: AttentionPlan, cache: KVCache) -> torch.Tensor:
        """inputs_embeds [B, T, hidden] → hidden states after the final norm, [B, T, hidden]."""
        cos = self.rope_cos[plan.positions].unsqueeze(1)
        sin = self.rope_sin[plan.positions].unsqueeze(1)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, plan, cache)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    """Backbone plus `lm_head`; the head exists for the checkpoint's keys, it is never run."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        # Tied like transformers: `lm_head` is loaded after `model.*`, so a checkpoint whose
        # two copies differ ends with lm_head's values in both, exactly as in the reference.
        if self.model.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def new_kv_cache(
        self,
        num_slots: int,
        max_model_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        config = self.model.config
        if max_model_len > config.max_position_embeddings:
            raise QwenConfigError(
                f"max_model_len {max_model_len} exceeds max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        weight = self.model.embed_tokens.weight
        return KVCache(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            max_model_len=max_model_len,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            device=device if device is not None else weight.device,
            dtype=dtype if dtype is not None else weight.dtype,
        )

    def forward(self, inputs_embeds: torch.Tensor, plan: AttentionPlan, cache: KVCache) -> torch.Tensor:
        return self.model(inputs_embeds, plan, cache)
