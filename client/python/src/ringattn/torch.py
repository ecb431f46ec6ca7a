"""PyTorch autograd over the service (the `ringattn[torch]` extra).

    attn = RingAttention("127.0.0.1:50051", layer=Layer(sliding=True, window=256))
    out = attn(q, k, v)          # q [B, H, S, D]; k, v [B, Hkv, S, D]
    out.sum().backward()         # q.grad, k.grad, v.grad from the service

Forward copies Q/K/V (float32, bfloat16 or float16; CPU or CUDA) to host
memory and sends them; the session handle lives in the autograd graph.
Backward sends dO and returns dQ/dK/dV in the inputs' dtype and device. The
session is released after backward, or as soon as the graph is freed without
one (an exception, an evaluation pass, a loss never used): a finalizer queues
the release on the client's background thread. With retain_graph=True pass
release_after_backward=False, so a second backward still finds the session.

layout="bshd" takes and returns [B, S, H, D] tensors (Hugging Face attention
implementations' layout) instead of [B, H, S, D].
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import weakref
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ringattn._proto.attention.v1 import attention_service_pb2 as pb
from ringattn.client import Client
from ringattn.errors import invalid
from ringattn.layer import Layer
from ringattn.results import ForwardResult, PreparedBatch

__all__ = ["PendingAttention", "RingAttention", "prepare_batch", "ring_attention",
           "ring_attention_async"]

_WIRE = {torch.float32: "FP32", torch.float16: "FP16", torch.bfloat16: "BF16"}
_LAYOUTS = ("bhsd", "bshd")
Metadata = Union[torch.Tensor, np.ndarray, None]


def _to_numpy(name: str, t: torch.Tensor) -> np.ndarray:
    """A host copy in the wire's numpy form (bfloat16 as uint16 bits)."""
    if t.dtype not in _WIRE:
        raise invalid(f"{name}.dtype {t.dtype}: float32, bfloat16 or float16")
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _from_numpy(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if array.dtype == np.uint16:  # bfloat16 bits
        t = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(array)
    return t.to(device=device, dtype=dtype)


def _metadata(x: Metadata) -> Optional[np.ndarray]:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16:  # An additive mask; numpy has no bfloat16.
            x = x.float()
        return x.numpy()
    return x


# The per-call metadata keywords (Client.forward's): explicit, or as a Hugging
# Face batch has it.
_METADATA = ("doc_ids", "vision_groups", "padding_mask", "attention_mask", "mm_token_type_ids",
             "packed_seq_ids")


class _Session:
    """Owns one open session; releases it once, when asked or when dropped."""

    def __init__(self, client: Client, handle: str) -> None:
        self.handle = handle
        self._finalizer = weakref.finalize(self, client.release_later, handle)
        self._finalizer.atexit = False  # At exit the coordinator expires it.

    def release(self) -> None:
        self._finalizer()


@dataclasses.dataclass
class _Call:
    """One attention call's settings (everything but the tensors)."""

    client: Client
    layer: Layer
    metadata: Dict[str, Optional[np.ndarray]]
    shard_layout: str
    timeout: Optional[float]
    release_after_backward: bool
    future: Optional["concurrent.futures.Future[ForwardResult]"] = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> ForwardResult:
        if self.future is not None:
            return self.future.result()
        return self.client.forward(_to_numpy("q", q), _to_numpy("k", k), _to_numpy("v", v),
                                   self.layer, dtype=_WIRE[q.dtype], timeout=self.timeout,
                                   shard_layout=self.shard_layout, **self.metadata)


class _RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                call: _Call) -> torch.Tensor:
        # q [B, H, S, D]; k, v [B, Hkv, S, D]; all one dtype. Returns [B, H, S, D].
        result = call.forward(q, k, v)
        session = _Session(call.client, result.handle)
        if not any(ctx.needs_input_grad[:3]):
            session.release()  # No backward can come.
        ctx.session = session
        ctx.call = call
        ctx.inputs = tuple((t.dtype, t.device) for t in (q, k, v))
        # What backward() checks dO against, without the outputs.
        ctx.forward = ForwardResult(result.handle, np.empty(0), np.empty(0), result.padded_len,
                                    pb.CallMetrics(), dtype=result.dtype, q_shape=result.q_shape,
                                    kv_heads=result.kv_heads)
        return _from_numpy(result.out, q.dtype, q.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor  # type: ignore[override]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        # dout [B, H, S, D] in the output dtype.
        call: _Call = ctx.call
        q_dtype = ctx.inputs[0][0]
        try:
            grads = call.client.backward(ctx.forward, _to_numpy("dout", dout.to(q_dtype)),
                                         timeout=call.timeout)
        finally:
            if call.release_after_backward:
                ctx.session.release()
        dq, dk, dv = (_from_numpy(g, dtype, device)
                      for g, (dtype, device) in zip((grads.dq, grads.dk, grads.dv), ctx.inputs))
        return dq, dk, dv, None


def _to_bhsd(layout: str, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if layout not in _LAYOUTS:
        raise invalid(f"layout {layout!r}: one of {_LAYOUTS}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise invalid(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            want = "[B, H, S, D]" if layout == "bhsd" else "[B, S, H, D]"
            raise invalid(f"{name} must be 4-D {want}, got shape {list(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise invalid(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _WIRE:
        raise invalid(f"q.dtype {q.dtype}: float32, bfloat16 or float16")
    if layout == "bshd":
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return q, k, v


def _call(client: Client, layer: Optional[Layer], metadata: Dict[str, Metadata],
          shard_layout: str, timeout: Optional[float], release_after_backward: bool) -> _Call:
    if not isinstance(client, Client):
        raise TypeError(f"client must be a ringattn.Client, got {type(client).__name__}")
    arrays = {name: _metadata(metadata.get(name)) for name in _METADATA}
    return _Call(client, layer or Layer(), arrays, shard_layout, timeout, release_after_backward)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, client: Client, *,
                   layer: Optional[Layer] = None, layout: str = "bhsd",
                   doc_ids: Metadata = None, vision_groups: Metadata = None,
                   padding_mask: Metadata = None, attention_mask: Metadata = None,
                   mm_token_type_ids: Metadata = None, packed_seq_ids: Metadata = None,
                   shard_layout: str = "auto", timeout: Optional[float] = None,
                   release_after_backward: bool = True) -> torch.Tensor:
    """Ring attention through the service, differentiable in q, k and v.

    q: [B, H, S, D] (layout="bhsd") or [B, S, H, D] ("bshd"); k, v the same with
    Hkv heads (H a multiple of Hkv). doc_ids, vision_groups, padding_mask:
    [B, S]; or as a Hugging Face batch has them, attention_mask [B, S] or
    [B, 1, S, S], mm_token_type_ids and packed_seq_ids [B, S] (see
    Client.forward). shard_layout: "auto", "contiguous" or "zigzag". Returns
    the attention output in q's layout, dtype and device.
    """
    qb, kb, vb = _to_bhsd(layout, q, k, v)
    call = _call(client, layer, dict(doc_ids=doc_ids, vision_groups=vision_groups,
                                     padding_mask=padding_mask, attention_mask=attention_mask,
                                     mm_token_type_ids=mm_token_type_ids,
                                     packed_seq_ids=packed_seq_ids),
                 shard_layout, timeout, release_after_backward)
    out = _RingAttentionFunction.apply(qb, kb, vb, call)
    return out.transpose(1, 2) if layout == "bshd" else out


class PendingAttention:
    """A forward in flight (ring_attention_async); wait() joins it to the graph.

    Dropped without wait(), its session is released once the forward is done.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str,
                 call: _Call) -> None:
        self._tensors: Tuple[torch.Tensor, ...] = (q, k, v)
        self._layout = layout
        self._call = call
        assert call.future is not None
        self._finalizer = weakref.finalize(self, call.client.release_later, call.future)
        self._finalizer.atexit = False

    def done(self) -> bool:
        assert self._call.future is not None
        return self._call.future.done()

    def wait(self) -> torch.Tensor:
        """The attention output, as ring_attention would have returned it."""
        if not self._finalizer.detach():
            raise RuntimeError("wait() was called already")
        out = _RingAttentionFunction.apply(*self._tensors, self._call)
        self._tensors = ()
        return out.transpose(1, 2) if self._layout == "bshd" else out


def ring_attention_async(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, client: Client, *,
                         layer: Optional[Layer] = None, layout: str = "bhsd",
                         doc_ids: Metadata = None, vision_groups: Metadata = None,
                         padding_mask: Metadata = None, attention_mask: Metadata = None,
                         mm_token_type_ids: Metadata = None, packed_seq_ids: Metadata = None,
                         shard_layout: str = "auto", timeout: Optional[float] = None,
                         release_after_backward: bool = True) -> PendingAttention:
    """ring_attention that returns at once: Q/K/V are copied to host memory
    here, sent on the client's worker threads, and wait() returns the output.
    Later in-place changes to q, k, v do not reach the service."""
    qb, kb, vb = _to_bhsd(layout, q, k, v)
    call = _call(client, layer, dict(doc_ids=doc_ids, vision_groups=vision_groups,
                                     padding_mask=padding_mask, attention_mask=attention_mask,
                                     mm_token_type_ids=mm_token_type_ids,
                                     packed_seq_ids=packed_seq_ids),
                 shard_layout, timeout, release_after_backward)
    arrays = [_to_numpy(name, t) for name, t in (("q", qb), ("k", kb), ("v", vb))]
    call.future = client.forward_async(*arrays, call.layer, dtype=_WIRE[qb.dtype],
                                       timeout=timeout, shard_layout=shard_layout,
                                       **call.metadata)
    return PendingAttention(qb, kb, vb, layout, call)


class RingAttention(nn.Module):
    """One attention layer computed by the service.

    address: "host:port" of the coordinator (a Client is made with
    client_kwargs: TLS, token, timeout, ...), or a Client to share.
    """

    def __init__(self, address: Union[str, Client], layer: Optional[Layer] = None, *,
                 layout: str = "bhsd", shard_layout: str = "auto",
                 timeout: Optional[float] = None, release_after_backward: bool = True,
                 **client_kwargs: Any) -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise invalid(f"layout {layout!r}: one of {_LAYOUTS}")
        self.client = address if isinstance(address, Client) else Client(address, **client_kwargs)
        self.layer = layer or Layer()
        self.layout = layout
        self.shard_layout = shard_layout
        self.timeout = timeout
        self.release_after_backward = release_after_backward

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                **metadata: Metadata) -> torch.Tensor:
        """metadata: ring_attention's doc_ids, ..., packed_seq_ids keywords."""
        return ring_attention(q, k, v, self.client, **self._settings(metadata))

    def forward_async(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      **metadata: Metadata) -> PendingAttention:
        return ring_attention_async(q, k, v, self.client, **self._settings(metadata))

    def _settings(self, metadata: Dict[str, Metadata]) -> Dict[str, Any]:
        unknown = sorted(set(metadata) - set(_METADATA))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; metadata is one of "
                            f"{list(_METADATA)}")
        return dict(layer=self.layer, layout=self.layout, shard_layout=self.shard_layout,
                    timeout=self.timeout, release_after_backward=self.release_after_backward,
                    **metadata)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, layout={self.layout!r}, shard_layout={self.shard_layout!r}"


def prepare_batch(client: Client, *, device: Optional[torch.device] = None,
                  **inputs: Any) -> PreparedBatch:
    """Client.prepare_batch on torch tensors: the same keywords (input_ids or
    inputs_embeds, labels, ...), tensors or arrays, and the answer's tensors
    (and shards) as torch tensors on `device` (default: that of input_ids or
    inputs_embeds). bfloat16 inputs_embeds come back as bfloat16."""
    if not isinstance(client, Client):
        raise TypeError(f"client must be a ringattn.Client, got {type(client).__name__}")
    primary = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if device is None:
        device = primary.device if isinstance(primary, torch.Tensor) else torch.device("cpu")
    embeds = inputs.get("inputs_embeds")
    if isinstance(embeds, torch.Tensor):
        inputs["inputs_embeds"] = _to_numpy("inputs_embeds", embeds)
        if embeds.dtype == torch.bfloat16:
            inputs.setdefault("embeds_dtype", "BF16")
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            inputs[name] = _metadata(value)
    prepared = client.prepare_batch(**inputs)
    bf16 = inputs.get("embeds_dtype") == "BF16"

    def convert(tensors: Dict[str, np.ndarray]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name, array in tensors.items():
            if name == "inputs_embeds" and bf16:
                out[name] = _from_numpy(array, torch.bfloat16, device)
            else:
                out[name] = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        return out

    return dataclasses.replace(prepared, tensors=convert(prepared.tensors),
                               shards=[convert(shard) for shard in prepared.shards])
