"""What Forward and Backward return."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Tuple

import grpc
import numpy as np

from ringattn._proto.attention.v1 import attention_service_pb2 as pb
from ringattn.errors import RingattnError

if TYPE_CHECKING:
    from ringattn.client import Client


@dataclasses.dataclass
class ForwardResult:
    """One open session: its outputs and what Backward needs to know.

    Usable as a context manager that releases the session on exit:

        with client.forward(q, k, v) as fwd:
            grads = fwd.backward(dout)
    """

    handle: str
    out: np.ndarray      # [B, H, S, D] in the input dtype (BF16 as uint16 bits)
    lse: np.ndarray      # [B, H, S] float32
    padded_len: int
    metrics: pb.CallMetrics
    dtype: str = "FP32"  # FP32, FP16 or BF16: what dout must be
    q_shape: Tuple[int, int, int, int] = (0, 0, 0, 0)
    kv_heads: int = 0
    client: Optional["Client"] = dataclasses.field(default=None, repr=False, compare=False)

    def backward(self, dout: np.ndarray, *, timeout: Optional[float] = None) -> "BackwardResult":
        """dout: [B, H, S, D] in this session's dtype."""
        return self._client().backward(self, dout, timeout=timeout)

    def release(self, *, timeout: Optional[float] = None) -> None:
        """Releases the session; a session already gone counts as released."""
        try:
            self._client().release(self.handle, timeout=timeout)
        except RingattnError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def __enter__(self) -> "ForwardResult":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _client(self) -> "Client":
        if self.client is None:
            raise RuntimeError("this ForwardResult was not made by a Client")
        return self.client


@dataclasses.dataclass
class BackwardResult:
    dq: np.ndarray  # [B, H, S, D] float32
    dk: np.ndarray  # [B, Hkv, S, D] float32
    dv: np.ndarray  # [B, Hkv, S, D] float32
    metrics: pb.CallMetrics
