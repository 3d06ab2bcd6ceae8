"""`cosyvoice make-tiny-model OUT_DIR [--seed N]`: a random-weight CosyVoice2 model directory.

Same files, names, key layouts and tags as CosyVoice2-0.5B; only the dimensions are small.
It is loaded through exactly the code path a real directory uses, which is the point: the
tests and the demo exercise the real loaders. Random weights make noise, not speech.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path
from typing import Sequence

import torch

from services.common.modeldir.layout import (
    FLOW_CHECKPOINT,
    HIFT_CHECKPOINT,
    LLM_CHECKPOINT,
    QWEN_DIR,
    SPK2INFO,
    ModelDir,
)
from services.common.modeldir.tokenizer import EOS_TOKEN, CosyVoiceTokenizer
from services.tinymodel.onnx_models import write_onnx_models
from services.tinymodel.prompt_audio import write_prompt_sample
from services.tinymodel.qwen_config import tiny_qwen_config
from services.tinymodel.tokenizer_files import write_tokenizer_dir

TINY_YAML = Path(__file__).with_name("cosyvoice2_tiny.yaml")
# CosyVoice2-0.5B's dimensions (its cosyvoice2.yaml and CosyVoice-BlankEN/config.json), for
# benchmarks at production shapes: (yaml line as in the tiny file, line at full size).
FULL_SIZE_YAML = (
    ("llm_input_size: 64", "llm_input_size: 896"),
    ("llm_output_size: 64", "llm_output_size: 896"),
    ("linear_units: 256", "linear_units: 2048"),
    ("num_blocks: 1", "num_blocks: 6"),
    ("channels: [64]", "channels: [256]"),
    ("attention_head_dim: 32", "attention_head_dim: 64"),
    ("n_blocks: 1", "n_blocks: 4"),
    ("num_mid_blocks: 2", "num_mid_blocks: 12"),
    ("num_heads: 2", "num_heads: 8"),
    ("base_channels: 64", "base_channels: 512"),
    ("cond_channels: 64", "cond_channels: 512"),
)
FULL_SIZE_QWEN = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "max_window_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
}
DEFAULT_SPEAKER = "default"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors format (8-byte header size, JSON header, raw little-endian data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for blob in blobs:
            file.write(blob)


def _write_yaml(root: Path, full_size: bool) -> None:
    text = TINY_YAML.read_text(encoding="utf-8")
    if full_size:
        for tiny, full in FULL_SIZE_YAML:
            if tiny not in text:
                raise RuntimeError(f"tiny yaml template lost its line {tiny!r}")
            text = text.replace(tiny, full)
        text = text.replace("with small dimensions", "with CosyVoice2-0.5B's dimensions")
    (root / "cosyvoice2.yaml").write_text(text, encoding="utf-8")


def _write_qwen_dir(root: Path, full_size: bool) -> None:
    qwen_dir = root / QWEN_DIR
    write_tokenizer_dir(qwen_dir)
    tokenizer = CosyVoiceTokenizer.from_dir(qwen_dir)
    # Like Qwen2's 151,936 rows for 151,663 tokens: round the embedding up past the tokenizer.
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    eos = tokenizer.token_id(EOS_TOKEN)
    config = tiny_qwen_config(vocab_size) | {"bos_token_id": eos, "eos_token_id": eos}
    if full_size:
        config |= FULL_SIZE_QWEN
    (qwen_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": eos, "eos_token_id": eos, "max_new_tokens": 2048, "do_sample": False}
    (qwen_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


@torch.no_grad()
def _make_voiced(hift: torch.nn.Module) -> None:
    """Random init predicts f0 near 0 Hz, below the 10 Hz voicing threshold, so the source
    would be noise only; an f0 around 150 Hz makes the tiny model exercise the harmonic path."""
    hift.f0_predictor.classifier.bias.fill_(150.0)


def write_tiny_model(out_dir: str | Path, seed: int = 0, full_size: bool = False, presets: bool = True) -> Path:
    """Write the directory and return its path; the global RNG state is left untouched.

    `full_size` writes CosyVoice2-0.5B's dimensions instead (about 2.6 GB, for benchmarks)."""
    from services.flow.model.loader import build_flow
    from services.flow.model.loader import official_state_dict as flow_state_dict
    from services.llm.model.loader import build_llm
    from services.llm.model.loader import official_state_dict as llm_state_dict
    from services.vocoder.model.loader import build_hift
    from services.vocoder.model.loader import official_state_dict as hift_state_dict

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _write_yaml(root, full_size)
    _write_qwen_dir(root, full_size)
    model_dir = ModelDir.open(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm_state = llm_state_dict(build_llm(model_dir))
        torch.save(llm_state, root / LLM_CHECKPOINT)
        torch.save(flow_state_dict(build_flow(model_dir)), root / FLOW_CHECKPOINT)
        hift = build_hift(model_dir)
        _make_voiced(hift)
        torch.save(hift_state_dict(hift), root / HIFT_CHECKPOINT)
        speakers = {DEFAULT_SPEAKER: {"embedding": torch.randn(1, 192)}}
        if presets:  # the official CosyVoice2-0.5B directory ships none: --no-presets is that layout
            torch.save(speakers, root / SPK2INFO)
        else:
            (root / SPK2INFO).unlink(missing_ok=True)
    # The HF backbone weights the reference's Qwen2Encoder loads first (llm.pt overwrites them).
    prefix = "llm.model."
    backbone = {key[len(prefix):]: value for key, value in llm_state.items() if key.startswith(prefix)}
    backbone.pop("lm_head.weight", None)  # tied to embed_tokens, as in the real file
    write_safetensors(backbone, root / QWEN_DIR / "model.safetensors")
    write_onnx_models(root, seed, model_dir.generation.speech_tokenizer_name)
    write_prompt_sample(root, seed)  # not in the official layout: a voice to try zero-shot with
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cosyvoice make-tiny-model", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--no-presets", action="store_true",
                        help="write no spk2info.pt, as the official CosyVoice2-0.5B directory has none")
    parser.add_argument("--full-size", action="store_true",
                        help="CosyVoice2-0.5B's dimensions (about 2.6 GB; for benchmarks, still random)")
    parser.add_argument("--force", action="store_true",
                        help="write into a directory that is not empty (its model files are replaced)")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"cosyvoice make-tiny-model: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # It could be a real model directory: random weights must never overwrite real ones.
        raise SystemExit(f"cosyvoice make-tiny-model: {out} is not empty; choose a new directory or pass --force")
    started = time.perf_counter()
    root = write_tiny_model(args.out_dir, args.seed, args.full_size, presets=not args.no_presets)
    print(f"wrote a random-weight CosyVoice2 model to {root} in {time.perf_counter() - started:.1f} s "
          "(random weights: it makes noise, not speech)")
