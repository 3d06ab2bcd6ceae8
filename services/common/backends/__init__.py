"""Compute backends for the two graphs the flow and vocoder stages can hand off: the flow
estimator and HiFT's network (docs/backends.md).

Each stage keeps its torch model and its small per-stage interface (the flow's
`EstimatorBackend`, the vocoder's `SpectrumBackend`); the adapters here run an exported ONNX
graph with onnxruntime or a TensorRT engine built from it. onnxruntime and tensorrt are
imported only inside the adapters, so a torch-only deployment never needs them.
"""

from __future__ import annotations

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
ONNX_PROVIDERS = ("cpu", "cuda")
# Opset 17 has LayerNormalization and STFT; TensorRT 8.6+ and onnxruntime 1.14+ read it.
ONNX_OPSET = 17


class BackendError(RuntimeError):
    """A backend that cannot start or run; one line naming the setting or file at fault."""
