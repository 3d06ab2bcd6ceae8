"""Where things are in an official CosyVoice model directory, per model generation.

The reference picks the generation by which yaml exists (`AutoModel`: cosyvoice.yaml, then
cosyvoice2.yaml, then cosyvoice3.yaml). Everything generation-specific about the *layout* lives
in `GENERATIONS`; the stage loaders dispatch on the yaml's class paths, so adding CosyVoice 3 is
a new table row plus new builders, not a new loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from services.common.modeldir.hyperyaml import ConfigError, Tagged, load_hyperyaml


class ModelDirError(ValueError):
    """A model directory that cannot be served; the message names the missing file or key."""


@dataclass(frozen=True)
class Generation:
    name: str  # "cosyvoice2"
    yaml_name: str
    speech_tokenizer_name: str
    is_supported: bool


GENERATIONS: tuple[Generation, ...] = (
    Generation("cosyvoice", "cosyvoice.yaml", "speech_tokenizer_v1.onnx", is_supported=False),
    Generation("cosyvoice2", "cosyvoice2.yaml", "speech_tokenizer_v2.onnx", is_supported=True),
    Generation("cosyvoice3", "cosyvoice3.yaml", "speech_tokenizer_v3.onnx", is_supported=False),
)

LLM_CHECKPOINT = "llm.pt"
FLOW_CHECKPOINT = "flow.pt"
HIFT_CHECKPOINT = "hift.pt"
SPEAKER_MODEL = "campplus.onnx"
SPK2INFO = "spk2info.pt"
QWEN_DIR = "CosyVoice-BlankEN"


@dataclass(frozen=True)
class ModelDir:
    """An opened model directory. Cheap to create: files are read when first needed."""

    root: Path
    generation: Generation

    @classmethod
    def open(cls, path: str | Path, *, allow_unsupported: bool = False) -> "ModelDir":
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ModelDirError(f"model directory {root} does not exist or is not a directory")
        for generation in GENERATIONS:  # the reference's AutoModel order
            if (root / generation.yaml_name).is_file():
                if not generation.is_supported and not allow_unsupported:
                    raise ModelDirError(
                        f"{root / generation.yaml_name}: {generation.name} models are not "
                        "supported yet (this server serves cosyvoice2)"
                    )
                return cls(root.resolve(), generation)
        names = ", ".join(g.yaml_name for g in GENERATIONS)
        raise ModelDirError(f"model directory {root} has none of {names}")

    def path(self, name: str) -> Path:
        return self.root / name

    def require(self, name: str) -> Path:
        """The path of a file the directory must have; a clear error naming it otherwise."""
        path = self.root / name
        if not path.exists():
            raise ModelDirError(f"model directory {self.root} is missing {name}")
        return path

    @cached_property
    def config(self) -> dict[str, Any]:
        try:
            return load_hyperyaml(self.require(self.generation.yaml_name))
        except ConfigError as exc:
            raise ModelDirError(str(exc)) from exc

    def stage_config(self, stage: str) -> Tagged:
        """The `!new:` node of one stage (`llm`, `flow` or `hift`) of the yaml."""
        node = self.config.get(stage)
        if not isinstance(node, Tagged):
            raise ModelDirError(
                f"{self.generation.yaml_name}: key '{stage}' is missing or is not a !new: node"
            )
        return node

    def hparam(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @cached_property
    def qwen_config(self) -> dict[str, Any]:
        """`CosyVoice-BlankEN/config.json`: the Qwen2 backbone's hyperparameters."""
        path = self.require(f"{QWEN_DIR}/config.json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"cannot read {path}: {exc}") from exc

    @property
    def tokenizer_dir(self) -> Path:
        return self.require(QWEN_DIR)

    @property
    def speech_tokenizer_path(self) -> Path:
        return self.require(self.generation.speech_tokenizer_name)

    @property
    def spk2info_path(self) -> Path | None:
        path = self.root / SPK2INFO
        return path if path.is_file() else None

    @property
    def sample_rate(self) -> int:
        return int(self.hparam("sample_rate", 24000))
