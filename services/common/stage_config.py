"""Settings every model stage (llm, flow, vocoder) has on top of the server settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.common.config import ServerConfig, check, setting

DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass
class StageConfig(ServerConfig):
    model_dir: Path | None = setting(None, "CosyVoice2 model directory (required)")
    device: str = setting("cpu", "torch device: cpu, cuda or cuda:N")
    dtype: str = setting("float32", "float32, float16 or bfloat16")
    num_threads: int = setting(0, "torch CPU threads; 0 keeps torch's default")

    def validate(self) -> None:
        super().validate()
        check(self.model_dir is not None, self, "model_dir", "is required")
        check(self.device == "cpu" or self.device.startswith("cuda"), self, "device", "must be cpu, cuda or cuda:N")
        check(self.dtype in DTYPES, self, "dtype", f"must be one of {', '.join(DTYPES)}")
        check(self.num_threads >= 0, self, "num_threads", "must be >= 0")

    def torch_dtype(self):  # noqa: ANN201 - torch imported lazily: servicers stay torch-free
        import torch

        return getattr(torch, self.dtype)

    def apply_threads(self) -> None:
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
