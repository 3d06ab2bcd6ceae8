"""Tensors on the wire: raw little-endian bytes plus dtype and shape (cosyvoice.v1.Tensor).

numpy only, so servicers and the gateway stay free of torch.
"""

from __future__ import annotations

import math

import numpy as np

from services.common.errors import InvalidRequest
from services.common.pb import common_pb2

_TO_NUMPY: dict[int, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.DTYPE_INT16: np.dtype("<i2"),
    common_pb2.DTYPE_INT32: np.dtype("<i4"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY: dict[str, int] = {dt.str[1:]: code for code, dt in _TO_NUMPY.items()}
MAX_TENSOR_ELEMENTS = 1 << 28


def to_proto(array: np.ndarray) -> common_pb2.Tensor:
    array = np.asarray(array)
    code = _FROM_NUMPY.get(array.dtype.str[1:])
    if code is None:
        raise TypeError(f"dtype {array.dtype} has no wire encoding")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return common_pb2.Tensor(dtype=code, shape=list(array.shape), data=np.ascontiguousarray(little).tobytes())


def from_proto(tensor: common_pb2.Tensor, field: str) -> np.ndarray:
    """Decode a wire tensor; malformed input raises InvalidRequest naming `field`."""
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        raise InvalidRequest(f"{field}.dtype: unsupported dtype {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{field}.shape: negative dimension in {list(shape)}")
    count = math.prod(shape)  # Python ints: a huge shape must not wrap around to a small count
    if count > MAX_TENSOR_ELEMENTS:
        raise InvalidRequest(f"{field}: {count} elements exceed the limit of {MAX_TENSOR_ELEMENTS}")
    if len(tensor.data) != count * dtype.itemsize:
        raise InvalidRequest(
            f"{field}.data: {len(tensor.data)} bytes, but shape {list(shape)} of "
            f"{common_pb2.DType.Name(tensor.dtype)} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def expect_shape(array: np.ndarray, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Check rank and fixed dimensions (None = any)."""
    if array.ndim != len(shape) or any(w is not None and w != d for w, d in zip(shape, array.shape)):
        wanted = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise InvalidRequest(f"{field}: shape {list(array.shape)} does not match {wanted}")
    return array
