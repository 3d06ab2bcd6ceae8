import numpy as np
import pytest

from services.common.errors import InvalidRequest
from services.common.pb import common_pb2
from services.common.tensors import expect_shape, from_proto, to_proto


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<i2", "<i4", "<i8", ">f4"])
def test_round_trip_is_exact_and_little_endian(dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 7).astype(dtype)
    message = to_proto(array)
    assert message.data == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    back = from_proto(message, "x")
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_bad_tensors_name_the_field():
    good = to_proto(np.zeros((2, 3), np.float32))
    with pytest.raises(InvalidRequest, match=r"mel.data: 20 bytes, but shape \[2, 3\]"):
        from_proto(common_pb2.Tensor(dtype=good.dtype, shape=[2, 3], data=good.data[:20]), "mel")
    with pytest.raises(InvalidRequest, match="mel.dtype"):
        from_proto(common_pb2.Tensor(dtype=0, shape=[1], data=b"\0\0\0\0"), "mel")
    with pytest.raises(InvalidRequest, match="exceed the limit"):
        from_proto(common_pb2.Tensor(dtype=good.dtype, shape=[2**32, 2**32], data=b""), "mel")
    with pytest.raises(InvalidRequest, match="negative"):
        from_proto(common_pb2.Tensor(dtype=good.dtype, shape=[-1], data=b""), "mel")
    with pytest.raises(InvalidRequest, match=r"mel: shape \[2, 3\] does not match \[80, \*\]"):
        expect_shape(np.zeros((2, 3)), "mel", (80, None))
