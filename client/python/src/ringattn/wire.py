"""Tensors on the wire: numpy arrays to and from TensorChunk streams.

A TensorChunk carries a dtype string, the whole int64 shape and raw
little-endian row-major bytes, at most 2 MiB per message. FP32 and FP16 are
numpy float32 / float16; BF16 travels as numpy uint16 arrays holding the raw
bfloat16 bits (numpy has no bfloat16).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple, TypeVar

import grpc
import numpy as np

from ringattn._proto.attention.v1 import tensor_pb2
from ringattn.errors import RingattnError

CHUNK_BYTES = 2 << 20
NUMPY_DTYPES: Dict[str, np.dtype] = {"FP32": np.dtype(np.float32), "FP16": np.dtype(np.float16),
                "BF16": np.dtype(np.uint16), "INT32": np.dtype(np.int32),
                "INT64": np.dtype(np.int64), "BOOL": np.dtype(np.uint8)}
# The wire dtype an array implies by itself; BF16 (uint16 bits) must be named.
FLOAT_WIRE: Dict[np.dtype, str] = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}

T = TypeVar("T")


def chunks(name: str, wire: str, array: np.ndarray) -> Iterator[tensor_pb2.TensorChunk]:
    """array in NUMPY_DTYPES[wire], any shape; one chunk even when empty."""
    array = np.ascontiguousarray(array)
    data = array.reshape(-1).view(np.uint8).data if array.size else memoryview(b"")
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        yield tensor_pb2.TensorChunk(name=name, dtype=wire, shape=list(array.shape),
                                     offset=offset, data=bytes(data[offset:offset + CHUNK_BYTES]))


def flag_last(items: Iterable[T], on_last: Callable[[], None]) -> Iterator[T]:
    """Yields items, calling on_last just before the final one goes out."""
    it = iter(items)
    try:
        pending = next(it)
    except StopIteration:
        return
    for item in it:
        yield pending
        pending = item
    on_last()
    yield pending


class Assembler:
    """Collects streamed pieces; checks that they tile each tensor exactly."""

    def __init__(self) -> None:
        self._parts: dict[str, list[bytes]] = {}
        self._meta: dict[str, Tuple[str, Tuple[int, ...]]] = {}

    def add(self, chunk: tensor_pb2.TensorChunk) -> None:
        have = sum(len(p) for p in self._parts.get(chunk.name, []))
        if chunk.offset != have:
            raise RingattnError(grpc.StatusCode.INTERNAL,
                                f"{chunk.name}: piece at {chunk.offset}, expected {have}")
        self._parts.setdefault(chunk.name, []).append(chunk.data)
        self._meta[chunk.name] = (chunk.dtype, tuple(chunk.shape))

    def names(self) -> Tuple[str, ...]:
        """The tensors seen, in the order their first pieces came."""
        return tuple(self._meta)

    def take(self, name: str) -> np.ndarray:
        if name not in self._meta:
            raise RingattnError(grpc.StatusCode.INTERNAL, f"the answer lacks {name}")
        wire, shape = self._meta[name]
        dtype: Optional[np.dtype] = NUMPY_DTYPES.get(wire)
        if dtype is None:
            raise RingattnError(grpc.StatusCode.INTERNAL, f"{name}: unknown dtype {wire!r}")
        data = b"".join(self._parts[name])
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise RingattnError(grpc.StatusCode.INTERNAL,
                                f"{name}: {len(data)} bytes for shape {list(shape)} {wire}")
        array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        return array.view(np.bool_) if wire == "BOOL" else array
