"""Every file of an official CosyVoice 2 model directory, who reads it, and whether it must be there.

The official CosyVoice2-0.5B repository also carries files this server never reads (a README,
`asset/`, a TensorRT source `flow.decoder.estimator.fp32.onnx`); they are listed as optional or
as "other files" so an operator sees at a glance that nothing needed is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.modeldir.layout import (
    FLOW_CHECKPOINT,
    HIFT_CHECKPOINT,
    LLM_CHECKPOINT,
    QWEN_DIR,
    SPEAKER_MODEL,
    SPK2INFO,
    ModelDir,
)

TOKENIZER_JSON = f"{QWEN_DIR}/tokenizer.json"
TOKENIZER_PAIR = (f"{QWEN_DIR}/vocab.json", f"{QWEN_DIR}/merges.txt")
# Hidden paths are not model files: huggingface_hub's `.cache/` in a downloaded directory,
# `.gitattributes`, ModelScope's `.msc` / `.mv` markers.
_IGNORED_PREFIXES = (".",)


@dataclass
class FileEntry:
    name: str  # relative to the model directory
    used_by: str  # the stages that read it, or why it is optional
    required: bool
    present: bool
    size_bytes: int | None


def _official_files(model_dir: ModelDir) -> list[tuple[str, str, bool]]:
    """(name, used by, required) in the order an operator reads them."""
    generation = model_dir.generation
    has_tokenizer_json = (model_dir.root / TOKENIZER_JSON).is_file()
    return [
        (generation.yaml_name, "every stage (hyperparameters)", True),
        (LLM_CHECKPOINT, "llm", True),
        (FLOW_CHECKPOINT, "flow", True),
        (HIFT_CHECKPOINT, "vocoder", True),
        (SPEAKER_MODEL, "frontend (speaker embedding of a recording)", True),
        (generation.speech_tokenizer_name, "frontend (speech tokens of a recording)", True),
        (f"{QWEN_DIR}/config.json", "llm (Qwen2 backbone sizes)", True),
        (TOKENIZER_PAIR[0], "llm, frontend (text tokenizer)", not has_tokenizer_json),
        (TOKENIZER_PAIR[1], "llm, frontend (text tokenizer)", not has_tokenizer_json),
        (f"{QWEN_DIR}/tokenizer_config.json", "optional: declares Qwen's added tokens", False),
        (f"{QWEN_DIR}/generation_config.json", "optional: not read by this server", False),
        (f"{QWEN_DIR}/model.safetensors", f"optional: not read ({LLM_CHECKPOINT} holds these weights)", False),
        (SPK2INFO, "optional: preset speakers for sft (the official directory has none)", False),
        ("flow.decoder.estimator.fp32.onnx", "optional: TensorRT source, not used by this server", False),
    ]


def list_expected_files(model_dir: ModelDir) -> list[FileEntry]:
    entries = []
    for name, used_by, required in _official_files(model_dir):
        path = model_dir.root / name
        present = path.is_file()
        entries.append(FileEntry(name, used_by, required, present, path.stat().st_size if present else None))
    if (model_dir.root / TOKENIZER_JSON).is_file():
        entries.append(FileEntry(TOKENIZER_JSON, "llm, frontend (text tokenizer)", True, True,
                                 (model_dir.root / TOKENIZER_JSON).stat().st_size))
    return entries


def list_other_files(root: Path, expected: list[FileEntry]) -> list[str]:
    """Files the server does not know about, relative and sorted; hidden paths are skipped."""
    known = {entry.name for entry in expected}
    others = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(_IGNORED_PREFIXES) for part in relative.parts) or not path.is_file():
            continue
        if relative.as_posix() not in known:
            others.append(relative.as_posix())
    return others
