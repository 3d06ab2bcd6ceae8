"""The inputs and outputs of the frontend's two ONNX models, read from the graph without
starting an inference session, and checked against how the frontend calls them.

The frontend feeds both models by input *position* (as the reference does), so what matters is
the number of inputs, their element types, and the fixed feature sizes: 80-bin fbank into
CAM++ and a 192-dim embedding out; 128-bin whisper log-mel and an int32 length into the S3
speech tokenizer. Symbolic dimensions (batch, time) are shown but never judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from services.common.speakers import EMBEDDING_DIM
from services.frontend.features import FBANK_BINS, WHISPER_N_MELS


@dataclass
class TensorSpec:
    name: str
    dtype: str  # ONNX element type name, e.g. FLOAT, INT32
    shape: list[int | str]  # a fixed size, a symbolic name, or "?"


@dataclass
class OnnxSummary:
    file: str
    role: str
    size_bytes: int
    opset: int | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Expected:
    """What the frontend needs of one input or output; None leaves that part unjudged."""

    dtype: str
    rank: int | None
    fixed: dict[int, int]  # axis -> size (negative axes count from the end)
    why: str


# Per model: its role, then what the frontend feeds it (by position) and reads back. The speech
# tokenizer's output is flattened and cast to int32 by the frontend, so any integer output works.
_CAMPPLUS = ("speaker encoder (CAM++)",
             [_Expected("FLOAT", 3, {-1: FBANK_BINS}, f"(1, T, {FBANK_BINS}) fbank")],
             [_Expected("FLOAT", None, {-1: EMBEDDING_DIM}, f"a {EMBEDDING_DIM}-dim x-vector")])  # fmt: skip
_SPEECH_TOKENIZER = ("speech tokenizer (S3)",
                     [_Expected("FLOAT", 3, {1: WHISPER_N_MELS}, f"(1, {WHISPER_N_MELS}, T) whisper log-mel"),
                      _Expected("INT32", 1, {}, "the int32 frame count")],
                     [])  # fmt: skip


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    return TensorSpec(value_info.name, dtype, dims)


def _judge(file: str, kind: str, position: int, spec: TensorSpec, expected: _Expected) -> list[str]:
    where = f"{file}: {kind} {position} ({spec.name})"
    if spec.dtype != expected.dtype:
        return [f"{where} is {spec.dtype}, the frontend feeds/reads {expected.dtype} ({expected.why})"]
    if expected.rank is not None and spec.shape and len(spec.shape) != expected.rank:  # no shape: unknown rank
        return [f"{where} has rank {len(spec.shape)}, the frontend needs {expected.rank} ({expected.why})"]
    problems = []
    for axis, size in expected.fixed.items():
        found = spec.shape[axis] if spec.shape else None
        if isinstance(found, int) and found != size:
            problems.append(f"{where} has size {found} on axis {axis}, the frontend needs {size} ({expected.why})")
    return problems


def summarize_onnx(path: Path, speech_tokenizer: bool) -> OnnxSummary:
    """Read the graph's signature (not its weights' external data) and check it."""
    role, inputs, outputs = _SPEECH_TOKENIZER if speech_tokenizer else _CAMPPLUS
    summary = OnnxSummary(path.name, role, path.stat().st_size)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors
        summary.problems.append(f"{path.name}: cannot read it as an ONNX model ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:120]})")
        return summary
    graph = model.graph
    # Initializers may be listed as graph inputs in old exports; they are not fed by the caller.
    initializers = {init.name for init in graph.initializer}
    summary.inputs = [_spec(value) for value in graph.input if value.name not in initializers]
    summary.outputs = [_spec(value) for value in graph.output]
    summary.opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)
    if len(summary.inputs) < len(inputs):
        summary.problems.append(
            f"{path.name}: has {len(summary.inputs)} input(s), the frontend feeds {len(inputs)} "
            f"({', '.join(item.why for item in inputs)})"
        )
    if not summary.outputs:
        summary.problems.append(f"{path.name}: has no outputs")
    for position, (spec, expected) in enumerate(zip(summary.inputs, inputs)):
        summary.problems += _judge(path.name, "input", position, spec, expected)
    for position, (spec, expected) in enumerate(zip(summary.outputs[:1], outputs)):
        summary.problems += _judge(path.name, "output", position, spec, expected)
    return summary
