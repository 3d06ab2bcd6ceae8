"""The CosyVoice 2 text tokenizer, read from `CosyVoice-BlankEN` without transformers or torch.

The reference wraps `AutoTokenizer(CosyVoice-BlankEN)` (a Qwen2 byte-level BPE shipped as
vocab.json + merges.txt) and then adds its special tokens in a fixed order. Their ids follow the
directory's own vocabulary, so they are looked up, never hard-coded: in the official model
`<|endofprompt|>` is 151646, in the tiny test model it is a few hundred.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from services.common.modeldir.layout import ModelDirError

# Same text as transformers' Qwen2 PRETOKENIZE_REGEX.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
EOS_TOKEN = "<|endoftext|>"
ENDOFPROMPT_TOKEN = "<|endofprompt|>"
# CosyVoice2Tokenizer's additional specials, in the reference's order (order decides the ids).
COSYVOICE2_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>",
    "[breath]", "<strong>", "</strong>", "[noise]",
    "[laughter]", "[cough]", "[clucking]", "[accent]",
    "[quick_breath]",
    "<laughter>", "</laughter>",
    "[hissing]", "[sigh]", "[vocalized-noise]",
    "[lipsmack]", "[mn]",
)  # fmt: skip


def build_qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A bare Qwen2-style byte-level BPE (no added tokens) from its vocab and merges."""
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read tokenizer file {path}: {exc}") from exc


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        left, _, right = line.partition(" ")
        merges.append((left, right))
    return merges


def _load_base(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(directory / "tokenizer.json"))
    for name in ("vocab.json", "merges.txt"):
        if not (directory / name).is_file():
            raise ModelDirError(f"tokenizer directory {directory} is missing {name}")
    tokenizer = build_qwen2_tokenizer(
        _read_json(directory / "vocab.json"), _read_merges(directory / "merges.txt")
    )
    config_path = directory / "tokenizer_config.json"
    declared = _read_json(config_path).get("added_tokens_decoder", {}) if config_path.is_file() else {}
    for token_id, spec in sorted(declared.items(), key=lambda item: int(item[0])):
        token = AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", True),
        )
        tokenizer.add_special_tokens([token]) if token.special else tokenizer.add_tokens([token])
        if tokenizer.token_to_id(spec["content"]) != int(token_id):
            raise ModelDirError(
                f"{config_path}: added token {spec['content']!r} should have id {token_id} but "
                f"the vocabulary gives it {tokenizer.token_to_id(spec['content'])}"
            )
    return tokenizer


class CosyVoiceTokenizer:
    """Text → token ids exactly as the reference's `CosyVoice2Tokenizer.encode` does."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def from_dir(
        cls, directory: str | Path, special_tokens: tuple[str, ...] = COSYVOICE2_SPECIAL_TOKENS
    ) -> "CosyVoiceTokenizer":
        tokenizer = _load_base(Path(directory))
        # Like transformers' add_special_tokens: tokens already known keep their id, new ones
        # are appended in order.
        tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, normalized=False, special=True)])
        tokenizer.add_special_tokens(
            [AddedToken(token, normalized=False, special=True) for token in special_tokens]
        )
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"tokenizer has no token {token!r}")
        return token_id

    @property
    def endofprompt_id(self) -> int:
        return self.token_id(ENDOFPROMPT_TOKEN)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)
