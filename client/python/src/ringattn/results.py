"""What Forward and Backward return."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import grpc
import numpy as np

from ringattn._proto.attention.v1 import attention_service_pb2 as pb
from ringattn.errors import RingattnError
from ringattn.wire import Assembler

if TYPE_CHECKING:
    from ringattn.client import Client


# shard_layout= names and the proto's values (docs/ring.md): the results are
# the same under every layout; only the balance of work and traffic differs.
SHARD_LAYOUTS: Dict[str, int] = {"auto": pb.SHARD_LAYOUT_AUTO,
                                 "contiguous": pb.SHARD_LAYOUT_CONTIGUOUS,
                                 "zigzag": pb.SHARD_LAYOUT_ZIGZAG}


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

    @property
    def shard_layout(self) -> str:
        """The layout the call ran with: "contiguous" or "zigzag"."""
        names = {value: name for name, value in SHARD_LAYOUTS.items()}
        return names.get(self.metrics.layout, "auto")

    def backward(self, dout: np.ndarray, *, dq: Optional[np.ndarray] = None,
                 dk: Optional[np.ndarray] = None, dv: Optional[np.ndarray] = None,
                 timeout: Optional[float] = None) -> "BackwardResult":
        """dout: [B, H, S, D] in this session's dtype; dq, dk, dv: region arrays
        for the gradients (Client.backward)."""
        return self._client().backward(self, dout, dq=dq, dk=dk, dv=dv, timeout=timeout)

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


@dataclasses.dataclass
class PreparedBatch:
    """What PrepareBatch returns: a batch padded to P as the ring computes it.

    tensors: the inputs given, padded to P (input_ids with pad_token_id,
    labels with -100, ...), plus position_ids (int64, [B, P] or [3, B, P]),
    padding_mask (bool, True = padding), doc_ids and vision_groups (int32).
    shards: with include_shards, rank r's contiguous slice [r*L, (r+1)*L) of
    the same tensors. numpy arrays; torch tensors from ringattn.torch's
    prepare_batch.
    """

    batch: int
    seq_len: int
    padded_len: int
    cp: int
    shard_len: int
    tensors: Dict[str, Any]
    shards: List[Dict[str, Any]]

    def __getitem__(self, name: str) -> Any:
        return self.tensors[name]

    @classmethod
    def from_answer(cls, info: pb.PreparedBatchInfo, assembler: Assembler) -> "PreparedBatch":
        tensors: Dict[str, np.ndarray] = {}
        shards: List[Dict[str, np.ndarray]] = [{} for _ in range(info.cp)]
        for name in assembler.names():
            rank, sep, field = name.partition("/")
            if not sep:
                tensors[name] = assembler.take(name)
                continue
            r = int(rank[len("rank"):]) if rank.startswith("rank") and rank[4:].isdigit() else -1
            if not 0 <= r < info.cp:
                raise RingattnError(grpc.StatusCode.INTERNAL, f"unexpected tensor {name!r}")
            shards[r][field] = assembler.take(name)
        return cls(info.batch, info.seq_len, info.padded_len, info.cp, info.shard_len, tensors,
                   shards if any(shards) else [])
