"""One exported graph run by onnxruntime, on the CPU or the CUDA execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from services.common.backends import BackendError


class OnnxGraph:
    """A thread-safe onnxruntime session for a float32 graph with one output.

    CPU: tensors go in and out as numpy views (no copy for contiguous CPU tensors). CUDA: inputs
    and the output stay on the GPU through io-binding, on torch's current stream.
    """

    def __init__(self, path: Path, provider: str, num_threads: int = 0, device: str = "cpu") -> None:
        import onnxruntime as ort  # heavy, and only this backend needs it

        self.provider = provider
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers etc. are not actionable
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        if provider == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "onnx_provider cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
                )
            self.device = torch.device(device if ":" in device else "cuda:0")
            cuda_options = {
                "device_id": self.device.index or 0,
                # One stream with torch: no cross-stream race between our copies and ORT's kernels.
                "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream),
            }
            providers: list = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        else:
            self.device = torch.device("cpu")
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def accepts(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        return True  # dynamic axes: any length

    def __call__(self, inputs: Mapping[str, torch.Tensor], output_shape: tuple[int, ...]) -> torch.Tensor:
        if self.provider == "cpu":
            feeds = {name: np.ascontiguousarray(inputs[name].detach().float().cpu().numpy())
                     for name in self.input_names}
            return torch.from_numpy(self.session.run([self.output_name], feeds)[0])
        return self._run_bound(inputs, output_shape)

    def _run_bound(self, inputs: Mapping[str, torch.Tensor], output_shape: tuple[int, ...]) -> torch.Tensor:
        binding = self.session.io_binding()
        index = self.device.index or 0
        held = []  # keep the float32 copies alive until the run returns
        for name in self.input_names:
            tensor = inputs[name].detach().to(self.device, torch.float32).contiguous()
            held.append(tensor)
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        output = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        binding.bind_output(self.output_name, "cuda", index, np.float32, tuple(output.shape), output.data_ptr())
        self.session.run_with_iobinding(binding)
        return output
