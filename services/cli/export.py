"""`cosyvoice export onnx|trt`: write the flow estimator and HiFT's network as ONNX graphs (and
check them against torch with onnxruntime), or build TensorRT engines from them.

The files land where `cosyvoice serve flow|vocoder` looks for them (COSYVOICE_*_ENGINE_DIR,
default <model_dir>/engines), named after the weights they came from; docs/backends.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

PROG = "cosyvoice export"
DTYPES = ("float32", "float16", "bfloat16")
# Frame counts checked against torch: short, the traced example's, and longer than it.
CHECK_FRAMES = (37, 120, 401)
TOLERANCE = 1e-3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=("onnx", "trt"), help="onnx graphs, or TensorRT engines built from them")
    parser.add_argument("--model-dir", required=True, type=Path, help="CosyVoice2 model directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory; default <model-dir>/engines")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="TensorRT engine precision (ONNX graphs are always float32)")
    parser.add_argument("--device", default="cuda", help="trt: the CUDA device to build for (engines are per GPU)")
    parser.add_argument("--min-frames", type=int, default=4, help="trt profile: fewest mel frames")
    parser.add_argument("--opt-frames", type=int, default=500, help="trt profile: mel frames tuned for")
    parser.add_argument("--max-frames", type=int, default=3000, help="trt profile: most mel frames")
    parser.add_argument("--max-batch-size", type=int, default=8, help="trt profile: most streams per call")
    return parser


def _fail(message: str, code: int = 1) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(list(argv))
    if args.format == "onnx" and args.dtype != "float32":
        _parser().error("--dtype: ONNX graphs are exported in float32; --dtype sets a TensorRT engine's precision")
    if not 1 <= args.min_frames <= args.opt_frames <= args.max_frames:
        _parser().error("--min-frames <= --opt-frames <= --max-frames must hold")
    if args.format == "trt":
        _check_trt_available(args.device)
    from services.common.backends import BackendError
    from services.common.modeldir.layout import ModelDir, ModelDirError

    try:
        model_dir = ModelDir.open(args.model_dir)
        out = args.out if args.out is not None else model_dir.root / "engines"
        graphs = _onnx_graphs(model_dir, out)
        if args.format == "trt":
            _build_engines(args, model_dir, out, graphs)
    except (ModelDirError, BackendError) as exc:
        _fail(str(exc))


def _check_trt_available(device: str) -> None:
    """Exit 2 with one line before loading anything when no engine can be built here."""
    import importlib.util

    import torch

    if not device.startswith("cuda"):
        _fail(f"trt: --device must be a CUDA device, got {device!r}", 2)
    if not torch.cuda.is_available():
        _fail("trt: TensorRT engines are built on the GPU that runs them, and torch sees no CUDA GPU", 2)
    if importlib.util.find_spec("tensorrt") is None:
        _fail("trt: the tensorrt Python package is not installed", 2)


def _onnx_graphs(model_dir, out: Path) -> dict:  # noqa: ANN001
    """Export both graphs (if absent) and check each against torch on the CPU; returns the
    loaded models and paths for the TensorRT step."""
    import torch

    from services.flow.backends import ensure_estimator_onnx
    from services.flow.backends.export import INPUT_NAMES as FLOW_INPUTS
    from services.flow.backends.export import example_inputs as flow_inputs
    from services.flow.model.loader import load_flow
    from services.vocoder.backends import ensure_network_onnx
    from services.vocoder.backends.export import INPUT_NAMES as HIFT_INPUTS
    from services.vocoder.backends.export import example_inputs as hift_inputs
    from services.vocoder.model.loader import load_hift

    estimator = load_flow(model_dir).decoder.estimator
    hift = load_hift(model_dir)
    flow_path = ensure_estimator_onnx(estimator, model_dir, out)
    hift_path = ensure_network_onnx(hift, model_dir, out)
    with torch.inference_mode():
        flow_diff = _onnx_max_diff(flow_path, FLOW_INPUTS, [flow_inputs(estimator, 2, n) for n in CHECK_FRAMES],
                                   lambda *a: estimator(*a[:6], streaming=a[6] > 0.5))
        hift_diff = _onnx_max_diff(hift_path, HIFT_INPUTS, [hift_inputs(hift, 1, n) for n in CHECK_FRAMES],
                                   hift.network)
    frames = "/".join(map(str, CHECK_FRAMES))
    for name, path, diff in (("flow estimator", flow_path, flow_diff), ("hift network", hift_path, hift_diff)):
        print(f"{name}: {path}  max |onnxruntime - torch| = {diff:.2e} at {frames} frames")
    if max(flow_diff, hift_diff) > TOLERANCE:
        _fail(f"onnx: onnxruntime differs from torch by more than {TOLERANCE:g}")
    return {"estimator": (estimator, flow_path), "hift": (hift, hift_path)}


def _onnx_max_diff(path: Path, names: Sequence[str], cases: list, reference) -> float:  # noqa: ANN001
    from services.common.backends.onnx_graph import OnnxGraph

    graph = OnnxGraph(path, "cpu")
    worst = 0.0
    for inputs in cases:
        expected = reference(*inputs)
        actual = graph(dict(zip(names, inputs)), tuple(expected.shape))
        worst = max(worst, float((actual - expected).abs().max()))
    return worst


def _build_engines(args: argparse.Namespace, model_dir, out: Path, graphs: dict) -> None:  # noqa: ANN001
    import torch

    from services.common.backends.settings import BackendStageConfig
    from services.common.backends.tensorrt_graph import TensorRTGraph
    from services.flow.backends import estimator_profile
    from services.flow.backends.export import INPUT_NAMES as FLOW_INPUTS
    from services.flow.backends.export import example_inputs as flow_inputs
    from services.vocoder.backends import network_profile
    from services.vocoder.backends.export import INPUT_NAMES as HIFT_INPUTS
    from services.vocoder.backends.export import example_inputs as hift_inputs

    config = BackendStageConfig(
        model_dir=model_dir.root, device=args.device, dtype=args.dtype, backend="tensorrt", engine_dir=out,
        trt_min_frames=args.min_frames, trt_opt_frames=args.opt_frames, trt_max_frames=args.max_frames,
        max_batch_size=args.max_batch_size, trt_contexts=1,
    )
    estimator, flow_path = graphs["estimator"]
    hift, hift_path = graphs["hift"]
    estimator.to(args.device)
    hift.to(args.device)
    frames = args.opt_frames
    checks = (
        ("flow estimator", flow_path, estimator_profile(estimator, config), FLOW_INPUTS,
         flow_inputs(estimator, 2, frames), lambda *a: estimator(*a[:6], streaming=a[6] > 0.5)),
        ("hift network", hift_path, network_profile(hift, config), HIFT_INPUTS, hift_inputs(hift, 1, frames),
         hift.network),
    )
    for name, path, profile, names, inputs, reference in checks:
        graph = TensorRTGraph(path, out, args.dtype, profile, 1, config.trt_workspace_mib, args.device)
        inputs = tuple(tensor.to(args.device) for tensor in inputs)
        with torch.inference_mode():
            expected = reference(*inputs)
            diff = float((graph(dict(zip(names, inputs)), tuple(expected.shape)) - expected).abs().max())
        print(f"{name}: {graph.plan}  max |tensorrt {args.dtype} - torch float32| = {diff:.2e} at {frames} frames")
