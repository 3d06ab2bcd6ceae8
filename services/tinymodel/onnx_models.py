"""Tiny stand-ins for `campplus.onnx` and `speech_tokenizer_v2.onnx` with the official call convention.

The reference calls both by input *position* (names unverified, see the facts sheet §1.2), so we
use the names the official exports are believed to carry and keep the positions and dtypes:
- CAM++: float32 fbank (B, T, 80) → (B, 192) speaker embedding;
- S3 tokenizer v2: float32 whisper log-mel (1, 128, T) and int32 (1,) length → int32 (1, T/4)
  speech tokens in 0..6560 (3^8 FSQ codes at 25 Hz from 100 Hz mel frames).
They are random projections, built with onnx.helper so no torch export is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SPEAKER_EMBED_DIM = 192
FBANK_DIM = 80
WHISPER_MEL_DIM = 128
FSQ_DIMS = 8  # 3 levels each → 3^8 = 6561 codes
TOKEN_STRIDE = 4  # 100 Hz mel frames → 25 Hz tokens


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def campplus_model(rng: np.random.Generator) -> onnx.ModelProto:
    weight = (rng.standard_normal((FBANK_DIM, SPEAKER_EMBED_DIM)) / np.sqrt(FBANK_DIM)).astype(np.float32)
    bias = (0.01 * rng.standard_normal(SPEAKER_EMBED_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["projected"]),
        helper.make_node("Add", ["projected", "b"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", FBANK_DIM])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", SPEAKER_EMBED_DIM])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _model(graph)


def speech_tokenizer_model(rng: np.random.Generator) -> onnx.ModelProto:
    kernel = (rng.standard_normal((FSQ_DIMS, WHISPER_MEL_DIM, TOKEN_STRIDE)) * 0.05).astype(np.float32)
    powers = (3.0 ** np.arange(FSQ_DIMS)).astype(np.float32).reshape(FSQ_DIMS, 1)
    nodes = [
        helper.make_node("Conv", ["feats", "K"], ["z"], strides=[TOKEN_STRIDE], kernel_shape=[TOKEN_STRIDE]),
        helper.make_node("Tanh", ["z"], ["bounded"]),
        helper.make_node("Round", ["bounded"], ["level"]),  # -1, 0, 1
        helper.make_node("Add", ["level", "one"], ["digit"]),  # 0, 1, 2
        helper.make_node("Transpose", ["digit"], ["digits_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["digits_t", "powers"], ["code"]),
        helper.make_node("Squeeze", ["code", "last_axis"], ["code_flat"]),
        helper.make_node("Cast", ["code_flat"], ["indices"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_v2_tiny",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, WHISPER_MEL_DIM, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT32, [1, "N"])],
        initializer=[
            numpy_helper.from_array(kernel, "K"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(powers, "powers"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
        ],
    )
    return _model(graph)


def write_onnx_models(root: Path, seed: int, speech_tokenizer_name: str) -> None:
    rng = np.random.default_rng(seed)
    onnx.save(campplus_model(rng), str(root / "campplus.onnx"))
    onnx.save(speech_tokenizer_model(rng), str(root / speech_tokenizer_name))
