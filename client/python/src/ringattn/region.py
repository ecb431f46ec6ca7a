"""Shared-memory regions: tensors a client on the service's host shares in place.

    with SharedRegion(64 << 20) as region, Client(address) as client:
        client.register_region(region)
        q = region.ndarray((B, H, S, D), np.float32)   # fill in place
        out = region.ndarray((B, H, S, D), np.float32)
        fwd = client.forward(q, k, v, out=out)          # q travels as a reference

A region is a POSIX shared-memory object this process creates and maps
(the C++ client's SharedRegion). Arrays carved from it are numpy views of
the mapping; an input the client finds lying in a registered region, in its
wire dtype and C-contiguous, is sent as (region, offset, byte_size) instead
of its bytes, and outputs given as region arrays are written there by the
workers. The object is unlinked when the region is closed; the mapping
itself lives on while arrays still view it.
"""

from __future__ import annotations

import itertools
import os
from multiprocessing import shared_memory
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ringattn.errors import invalid

__all__ = ["SharedRegion"]

# Arrays are carved at cache-line boundaries, as the workers' kernels like.
_ALIGN = 64
_serial = itertools.count()


class SharedRegion:
    """A new POSIX shared-memory object of `byte_size` bytes, zeroed, mapped.

    shm_name: the object's name ("/name"); by default one of this process's
    own, "/ringattn_py_<pid>_<n>". FileExistsError when the name is taken.
    """

    def __init__(self, byte_size: int, shm_name: Optional[str] = None) -> None:
        if byte_size <= 0:
            raise invalid(f"a region's byte_size must be positive, got {byte_size}")
        if shm_name is None:
            shm_name = f"/ringattn_py_{os.getpid()}_{next(_serial)}"
        if not shm_name.startswith("/") or "/" in shm_name[1:]:
            raise invalid(f"shm_name {shm_name!r} must be '/name' (one leading slash)")
        self._shm: Optional[shared_memory.SharedMemory] = shared_memory.SharedMemory(
            name=shm_name[1:], create=True, size=byte_size)
        self.shm_name = shm_name
        self.byte_size = byte_size
        # The mapping's address, to place arrays in it (the view goes at once).
        self._base = np.frombuffer(self._shm.buf, np.uint8).__array_interface__["data"][0]
        self._next = 0

    # -- arrays ---------------------------------------------------------------

    def ndarray(self, shape: Sequence[int], dtype: Any, offset: Optional[int] = None) -> np.ndarray:
        """A C-contiguous array viewing the region at `offset` (by default the
        next free, 64-byte aligned place). ValueError when it does not fit."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if offset is None:
            offset = -(-self._next // _ALIGN) * _ALIGN
        if offset < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit in a region of "
                             f"{self.byte_size} bytes")
        self._next = max(self._next, offset + nbytes)
        return np.ndarray(tuple(shape), dt, buffer=self._buffer(), offset=offset)

    def locate(self, array: np.ndarray) -> Optional[Tuple[int, int]]:
        """(offset, byte_size) of a C-contiguous array lying wholly in this
        region, else None."""
        if self._shm is None or not array.flags.c_contiguous or array.nbytes == 0:
            return None
        offset = array.__array_interface__["data"][0] - self._base
        if offset < 0 or offset + array.nbytes > self.byte_size:
            return None
        return offset, array.nbytes

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Unlinks the object (the service can no longer open it) and unmaps it
        once no array views it."""
        if self._shm is None:
            return
        shm, self._shm = self._shm, None
        shm.unlink()
        try:
            shm.close()
        except BufferError:
            pass  # Arrays still view the mapping; it goes with the last of them.

    def __enter__(self) -> "SharedRegion":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __repr__(self) -> str:
        return f"SharedRegion({self.byte_size}, shm_name={self.shm_name!r})"

    def _buffer(self) -> memoryview:
        if self._shm is None:
            raise ValueError(f"region {self.shm_name} is closed")
        return self._shm.buf
