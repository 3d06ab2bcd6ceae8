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


def open_graph(config, onnx_path, engine_dir, profile):  # noqa: ANN001, ANN201 - typed in the adapters
    """The exported graph at `onnx_path` on config.backend (onnxruntime or tensorrt), and a
    one-line description for the log. `profile` builds the TensorRT shape profile; called only
    for tensorrt. The one place both stages open their graphs."""
    if config.backend == "onnxruntime":
        from services.common.backends.onnx_graph import OnnxGraph

        graph = OnnxGraph(onnx_path, config.onnx_provider, config.num_threads, config.device)
        return graph, f"onnxruntime ({config.onnx_provider}) {onnx_path.name}"
    from services.common.backends.tensorrt_graph import TensorRTGraph

    graph = TensorRTGraph(onnx_path, engine_dir, config.dtype, profile(),
                          config.trt_contexts, config.trt_workspace_mib, config.device)
    return graph, f"tensorrt ({config.dtype}, {config.trt_contexts} contexts) {graph.plan.name}"
