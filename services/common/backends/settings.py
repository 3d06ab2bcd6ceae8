"""The backend settings the flow and vocoder stages share (COSYVOICE_FLOW_BACKEND, ...)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from services.common.backends import BACKENDS, ONNX_PROVIDERS
from services.common.config import ConfigError, check, setting, setting_names
from services.common.stage_config import BatchingStageConfig


@dataclasses.dataclass
class BackendStageConfig(BatchingStageConfig):
    """A batching stage whose main graph can run on torch, onnxruntime or TensorRT."""

    backend: str = setting("torch", "torch, torch-compile, onnxruntime or tensorrt (docs/backends.md)")
    onnx_provider: str = setting("cpu", "onnxruntime execution provider: cpu or cuda")
    engine_dir: Path | None = setting(
        None, "where exported ONNX graphs and TensorRT engines are kept; default <model_dir>/engines"
    )
    # TensorRT optimization profile on the time axis (mel frames at 50 Hz). Outside it the
    # stage runs that call on torch (docs/backends.md).
    trt_min_frames: int = setting(4, "TensorRT profile: fewest mel frames an engine call takes")
    trt_opt_frames: int = setting(500, "TensorRT profile: the mel frame count the engine is tuned for")
    trt_max_frames: int = setting(3000, "TensorRT profile: most mel frames an engine call takes")
    trt_contexts: int = setting(2, "TensorRT execution contexts (concurrent engine calls) per engine")
    trt_workspace_mib: int = setting(4096, "TensorRT builder workspace, MiB")

    def validate(self) -> None:
        super().validate()
        check(self.backend in BACKENDS, self, "backend", f"must be one of {', '.join(BACKENDS)}")
        check(self.onnx_provider in ONNX_PROVIDERS, self, "onnx_provider", "must be cpu or cuda")
        check(1 <= self.trt_min_frames <= self.trt_opt_frames <= self.trt_max_frames, self, "trt_opt_frames",
              "must satisfy 1 <= trt_min_frames <= trt_opt_frames <= trt_max_frames")
        check(self.trt_contexts >= 1, self, "trt_contexts", "must be >= 1")
        check(self.trt_workspace_mib >= 64, self, "trt_workspace_mib", "must be >= 64")
        on_gpu = self.device.startswith("cuda")
        backend = setting_names(type(self), "backend")
        device = setting_names(type(self), "device")
        if self.backend == "onnxruntime":
            _require_package("onnxruntime", backend, self.backend)
            check(self.onnx_provider == "cpu" or on_gpu, self, "onnx_provider",
                  f"cuda needs a CUDA device: set {device} to cuda")
            check(self.dtype == "float32", self, "dtype",
                  "must be float32 with the onnxruntime backend (its graphs are exported in float32)")
        if self.backend == "tensorrt":
            if not on_gpu:
                raise ConfigError(f"{backend} tensorrt needs a CUDA device: set {device} to cuda "
                                  f"(got {self.device!r})")
            _require_gpu(backend)
            _require_package("tensorrt", backend, self.backend)

    def resolved_engine_dir(self) -> Path:
        assert self.model_dir is not None  # validated
        return self.engine_dir if self.engine_dir is not None else Path(self.model_dir) / "engines"

    def trt_frames(self) -> tuple[int, int, int]:
        return self.trt_min_frames, self.trt_opt_frames, self.trt_max_frames


def _require_package(package: str, setting_label: str, backend: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{setting_label} {backend} needs the {package} Python package, which is not installed")


def _require_gpu(setting_label: str) -> None:
    import torch  # only for this check: the stage loads torch right after anyway

    if not torch.cuda.is_available():
        raise ConfigError(f"{setting_label} tensorrt needs a CUDA GPU, and torch sees none")
