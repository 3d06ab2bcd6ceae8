"""One exported graph as a TensorRT engine: built from the ONNX with a min/opt/max profile,
cached on disk per GPU model, TensorRT version and precision, run through a pool of execution
contexts so concurrent calls do not wait for each other.

Written against the TensorRT 10 Python API (named I/O tensors, `execute_async_v3`). It cannot
run on a machine without an NVIDIA GPU; its tests skip there (docs/backends.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from services.common.backends import BackendError

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Profile:
    """Per input: (min, opt, max) shapes of one optimization profile."""

    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def admits(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        for name, (low, _, high) in self.shapes.items():
            shape = tuple(inputs[name].shape)
            if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                return False
        return True

    def describe(self) -> str:
        return ";".join(f"{n}:{lo}/{opt}/{hi}" for n, (lo, opt, hi) in sorted(self.shapes.items()))


def engine_path(onnx_path: Path, engine_dir: Path, gpu_name: str, trt_version: str, precision: str,
                profile: Profile) -> Path:
    """`<graph>.<gpu>.trt<version>.<precision>.<hash>.plan`: an engine only runs on the GPU model
    and TensorRT version that built it; the hash covers the ONNX bytes and the profile."""
    digest = hashlib.sha256(onnx_path.read_bytes())
    digest.update(profile.describe().encode())
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return engine_dir / f"{onnx_path.stem}.{gpu}.trt{trt_version}.{precision}.{digest.hexdigest()[:12]}.plan"


class TensorRTGraph:
    """A float32-I/O engine with one output; precision applies inside the engine."""

    def __init__(self, onnx_path: Path, engine_dir: Path, precision: str, profile: Profile,
                 contexts: int, workspace_mib: int, device: str) -> None:
        import tensorrt as trt  # heavy, and only this backend needs it

        if precision not in PRECISIONS:
            raise BackendError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device if ":" in device else "cuda:0")
        self.profile = profile
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        plan = engine_path(onnx_path, engine_dir, torch.cuda.get_device_name(self.device), trt.__version__,
                           precision, profile)
        if not plan.exists():
            logger.info("building TensorRT engine %s (minutes)", plan.name)
            _write_atomic(plan, self._build(onnx_path, precision, workspace_mib))
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            if self.engine is None:
                raise BackendError(f"TensorRT cannot load {plan}; delete it to rebuild")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.output_name = next(n for n in names if n not in self.input_names)
            # Each context has its own stream: calls from different threads overlap on the GPU.
            self._pool: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(contexts):
                self._pool.put((self.engine.create_execution_context(), torch.cuda.Stream(self.device)))
        self.plan = plan

    def _build(self, onnx_path: Path, precision: str, workspace_mib: int) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            first = parser.get_error(0) if parser.num_errors else "unknown error"
            raise BackendError(f"TensorRT cannot parse {onnx_path}: {first}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        if precision == "float16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bfloat16":
            if not hasattr(trt.BuilderFlag, "BF16"):
                raise BackendError(f"TensorRT {trt.__version__} has no bfloat16 (needs 9.0 or later)")
            config.set_flag(trt.BuilderFlag.BF16)
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in self.profile.shapes.items():
            optimization.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
        return bytes(serialized)

    def accepts(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        return self.profile.admits(inputs)

    def __call__(self, inputs: Mapping[str, torch.Tensor], output_shape: tuple[int, ...]) -> torch.Tensor:
        context, stream = self._pool.get()  # blocks while every context is busy
        try:
            caller = torch.cuda.current_stream(self.device)
            stream.wait_stream(caller)  # the inputs were produced on the caller's stream
            held = []
            with torch.cuda.stream(stream):
                for name in self.input_names:
                    tensor = inputs[name].detach().to(self.device, torch.float32).contiguous()
                    held.append(tensor)
                    context.set_input_shape(name, tuple(tensor.shape))
                    context.set_tensor_address(name, tensor.data_ptr())
                output = torch.empty(output_shape, dtype=torch.float32, device=self.device)
                context.set_tensor_address(self.output_name, output.data_ptr())
                if not context.execute_async_v3(stream.cuda_stream):
                    raise BackendError(f"TensorRT engine {self.plan.name} failed to run")
            # Before the context goes back to the pool and the inputs may be freed.
            stream.synchronize()
            return output
        finally:
            self._pool.put((context, stream))


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BackendError(f"cannot write TensorRT engines to {path.parent}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
