"""numpy arrays to and from vae.v1 Tensor messages (packed little-endian bytes)."""

from __future__ import annotations

import numpy as np

from vaeserve.proto.vae.v1 import vae_pb2

_TO_NUMPY = {
    vae_pb2.FLOAT32: np.dtype("<f4"),
    vae_pb2.FLOAT64: np.dtype("<f8"),
    vae_pb2.FLOAT16: np.dtype("<f2"),
    vae_pb2.INT64: np.dtype("<i8"),
    vae_pb2.BOOL: np.dtype("?"),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


class TensorError(ValueError):
    """A Tensor message whose dtype, shape and bytes do not agree."""


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    """Pack an array; non-little-endian or non-contiguous input is converted first."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _FROM_NUMPY:
        raise TensorError(f"dtype {array.dtype} has no vae.v1 DataType")
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return vae_pb2.Tensor(dtype=_FROM_NUMPY[dtype], shape=array.shape, data=data)


def from_tensor(tensor: vae_pb2.Tensor, what: str = "tensor") -> np.ndarray:
    """Unpack a Tensor into a read-only array view of its bytes; TensorError names `what`."""
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        name = vae_pb2.DataType.Name(tensor.dtype) if tensor.dtype in (0,) else tensor.dtype
        raise TensorError(
            f"{what}: dtype {name} is not supported; send FLOAT32 (or FLOAT64/FLOAT16/INT64)"
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a negative dimension")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = tensor.data  # each attribute read copies the payload: read it once
    if len(data) != expected:
        raise TensorError(
            f"{what}: {len(data)} bytes do not match shape {list(shape)} of "
            f"{np.dtype(dtype).name} ({expected} bytes expected)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def is_set(tensor: vae_pb2.Tensor) -> bool:
    """True when a Tensor field carries data (an unset message field has no shape)."""
    return len(tensor.shape) > 0
