"""A thin client of ringattn.attention.v1.AttentionService.

Tensors travel as TensorChunk messages (dtype string, int64 shape, raw
little-endian row-major bytes) of at most 2 MiB each. FP32 and FP16 map to
numpy float32 / float16; BF16 tensors are passed as numpy uint16 arrays of
raw bfloat16 bits with dtype="BF16".

TLS and tokens mirror the C++ client's flags: tls_ca_file verifies the
coordinator, tls_cert_file / tls_key_file are the client certificate for
coordinators that require one, and a token (or the first token of
auth_token_file) travels as `authorization: Bearer <token>`, only over TLS.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Iterator, Optional

import grpc
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_proto"))
from attention.v1 import attention_service_pb2 as pb  # noqa: E402
from attention.v1 import attention_service_pb2_grpc as pb_grpc  # noqa: E402
from attention.v1 import tensor_pb2  # noqa: E402

_CHUNK_BYTES = 2 << 20
_NUMPY = {"FP32": np.float32, "FP16": np.float16, "BF16": np.uint16, "INT32": np.int32,
          "BOOL": np.uint8}


@dataclasses.dataclass
class Layer:
    """One attention layer's config (SPEC §2). scale defaults to 1/sqrt(D)."""

    sliding: bool = False
    window: int = 512
    scale: Optional[float] = None
    causal: bool = True
    vision_bidirectional: bool = True
    dropout: float = 0.0

    def to_proto(self) -> pb.LayerConfig:
        layer = pb.LayerConfig(
            kind=pb.LayerConfig.KIND_SLIDING if self.sliding else pb.LayerConfig.KIND_FULL,
            window=self.window, causal=self.causal,
            vision_bidirectional=self.vision_bidirectional, dropout=self.dropout)
        if self.scale is not None:
            layer.scale = self.scale
        return layer


@dataclasses.dataclass
class ForwardResult:
    handle: str
    out: np.ndarray      # [B, H, S, D] in the input dtype
    lse: np.ndarray      # [B, H, S] float32
    padded_len: int
    metrics: pb.CallMetrics


@dataclasses.dataclass
class BackwardResult:
    dq: np.ndarray  # [B, H, S, D] float32
    dk: np.ndarray  # [B, Hkv, S, D] float32
    dv: np.ndarray  # [B, Hkv, S, D] float32
    metrics: pb.CallMetrics


def _chunks(name: str, dtype: str, array: np.ndarray) -> Iterator[tensor_pb2.TensorChunk]:
    data = np.ascontiguousarray(array).tobytes()
    for offset in range(0, max(len(data), 1), _CHUNK_BYTES):
        yield tensor_pb2.TensorChunk(name=name, dtype=dtype, shape=list(array.shape),
                                     offset=offset, data=data[offset:offset + _CHUNK_BYTES])


class _Assembler:
    """Collects streamed pieces; checks that they tile each tensor exactly."""

    def __init__(self) -> None:
        self.parts: dict[str, list[bytes]] = {}
        self.meta: dict[str, tuple[str, tuple[int, ...]]] = {}

    def add(self, chunk: tensor_pb2.TensorChunk) -> None:
        have = sum(len(p) for p in self.parts.get(chunk.name, []))
        if chunk.offset != have:
            raise ValueError(f"{chunk.name}: piece at {chunk.offset}, expected {have}")
        self.parts.setdefault(chunk.name, []).append(chunk.data)
        self.meta[chunk.name] = (chunk.dtype, tuple(chunk.shape))

    def take(self, name: str) -> np.ndarray:
        dtype, shape = self.meta[name]
        array = np.frombuffer(b"".join(self.parts[name]), dtype=_NUMPY[dtype])
        return array.reshape(shape).copy()


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def first_token(path: str) -> str:
    """The first token of a token file ('token' or 'name:token' lines, '#' comments)."""
    with open(path, encoding="ascii") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split(":", 1)[-1].strip()
    raise ValueError(f"token file {path!r} holds no token")


class Client:
    """Forward, backward, release and status against one coordinator."""

    def __init__(self, address: str, timeout: float = 600.0, *, tls: bool = False,
                 tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, tls_server_name: Optional[str] = None,
                 token: Optional[str] = None, auth_token_file: Optional[str] = None) -> None:
        options = [("grpc.max_receive_message_length", 8 << 20),
                   ("grpc.max_send_message_length", 8 << 20)]
        if token is None and auth_token_file:
            token = first_token(auth_token_file)
        if bool(tls_cert_file) != bool(tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if tls or tls_ca_file or tls_cert_file:
            creds = grpc.ssl_channel_credentials(root_certificates=_read(tls_ca_file),
                                                 private_key=_read(tls_key_file),
                                                 certificate_chain=_read(tls_cert_file))
            if token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token))
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(address, creds, options=options)
        elif token:
            raise ValueError("a token needs TLS (tls_ca_file, or tls=True): a bearer token sent "
                             "in clear text is anyone's")
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.AttentionServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def forward(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: Layer = Layer(),
                dtype: Optional[str] = None, doc_ids: Optional[np.ndarray] = None,
                vision_groups: Optional[np.ndarray] = None,
                padding_mask: Optional[np.ndarray] = None) -> ForwardResult:
        """q: [B, H, S, D]; k, v: [B, Hkv, S, D]; metadata [B, S]."""
        if dtype is None:
            dtype = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}.get(q.dtype)
            if dtype is None:
                raise ValueError(f"q.dtype {q.dtype} needs an explicit dtype= (BF16 as uint16)")
        B, H, S, D = q.shape
        header = pb.ForwardHeader(layer=layer.to_proto(), dtype=dtype, batch=B, heads=H,
                                  kv_heads=k.shape[1], seq_len=S, head_dim=D)

        def requests():
            yield pb.ForwardRequest(header=header)
            for name, array, wire in (("q", q, dtype), ("k", k, dtype), ("v", v, dtype),
                                      ("doc_ids", doc_ids, "INT32"),
                                      ("vision_groups", vision_groups, "INT32"),
                                      ("padding_mask", padding_mask, "BOOL")):
                if array is None:
                    continue
                array = np.asarray(array, dtype=_NUMPY[wire])
                for chunk in _chunks(name, wire, array):
                    yield pb.ForwardRequest(chunk=chunk)

        assembler = _Assembler()
        session, metrics = None, None
        for resp in self._stub.Forward(requests(), timeout=self._timeout):
            which = resp.WhichOneof("part")
            if which == "session":
                session = resp.session
            elif which == "chunk":
                assembler.add(resp.chunk)
            else:
                metrics = resp.metrics
        return ForwardResult(session.handle, assembler.take("out"), assembler.take("lse"),
                             session.padded_len, metrics)

    def backward(self, handle: str, dout: np.ndarray, dtype: Optional[str] = None
                 ) -> BackwardResult:
        """dout: [B, H, S, D] in the forward dtype."""
        wire = dtype or {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16"}[dout.dtype]

        def requests():
            yield pb.BackwardRequest(header=pb.BackwardHeader(handle=handle))
            for chunk in _chunks("dout", wire, dout):
                yield pb.BackwardRequest(chunk=chunk)

        assembler = _Assembler()
        metrics = None
        for resp in self._stub.Backward(requests(), timeout=self._timeout):
            if resp.WhichOneof("part") == "chunk":
                assembler.add(resp.chunk)
            else:
                metrics = resp.metrics
        return BackwardResult(assembler.take("dq"), assembler.take("dk"), assembler.take("dv"),
                              metrics)

    def release(self, handle: str) -> None:
        self._stub.Release(pb.ReleaseRequest(handle=handle), timeout=30)

    def status(self) -> pb.ClusterStatusResponse:
        return self._stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
