"""A small Qwen2-style byte-level BPE written as `CosyVoice-BlankEN/` is: vocab.json + merges.txt.

The real directory holds a 151,643-entry vocabulary plus three added tokens declared in
tokenizer_config.json; ours holds a few hundred, trained here on a handful of sentences, with the
same three added tokens. CosyVoice's own specials are *not* written: like the reference, the
loader appends them at load time, so their ids follow the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import pre_tokenizers, trainers

from services.common.modeldir.tokenizer import build_qwen2_tokenizer

QWEN2_ADDED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = (
    "Hello, this is a tiny CosyVoice model with random weights. It makes noise, not speech.",
    "The quick brown fox jumps over the lazy dog. 1234567890!",
    "Streaming text to speech sends the first audio before the sentence is finished.",
    "What time is it? It is half past ten; the meeting starts at eleven.",
    "收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐。",
    "希望你以后能够做的比我还好呦。今天天气很好，我们去公园散步吧。",
    "Voices, tokens, mel frames and waveforms: twenty-five tokens per second of audio.",
)


def train_vocab(vocab_size: int = 512) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic byte-level BPE vocabulary and merges over the built-in corpus."""
    seed = build_qwen2_tokenizer({}, [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    seed.train_from_iterator(_CORPUS * 4, trainer=trainer)
    state = json.loads(seed.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges  # type: ignore[return-value]


def write_tokenizer_dir(directory: Path, vocab_size: int = 512) -> int:
    """Write vocab.json, merges.txt, tokenizer_config.json; return the size incl. added tokens."""
    vocab, merges = train_vocab(vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    added = {
        str(len(vocab) + i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(QWEN2_ADDED_TOKENS)
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(QWEN2_ADDED_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": QWEN2_ADDED_TOKENS[0],
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": QWEN2_ADDED_TOKENS[0],
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab) + len(QWEN2_ADDED_TOKENS)

