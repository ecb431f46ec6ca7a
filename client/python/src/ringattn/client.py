"""A client of ringattn.attention.v1.AttentionService: numpy arrays in and out.

Every failed call raises RingattnError (the gRPC code and the server's
message); shapes and dtypes are checked before anything is sent. Each call
takes a timeout (seconds, for the whole call including retries; the client's
default otherwise).

Retries: a call that fails with UNAVAILABLE is tried again (up to `retries`
times, with backoff) only where repeating it cannot do work twice:
ClusterStatus always; Release always (NOT_FOUND on a retry means the first
try got through); Forward and Backward only while the request stream had not
yet let go of its last tensor chunk. The coordinator acts on a stream only
once it holds every declared tensor, so a stream cut before its last chunk
left no session and ran nothing; after the last chunk a session may exist,
and the error is raised instead (a session nobody holds expires on the
coordinator).

Shared-memory regions (ringattn.region.SharedRegion): after
register_region(region), any input that lies in the region, in its wire dtype
and C-contiguous, is sent as a reference instead of its bytes, and outputs
given as region arrays (out=, lse=; dq=, dk=, dv=) are written there in place.

TLS and tokens mirror the C++ client's flags: tls_ca_file verifies the
coordinator, tls_cert_file / tls_key_file are the client certificate for
coordinators that require one, and a token (or the first token of
auth_token_file) travels as `authorization: Bearer <token>`, only over TLS.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
import weakref
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar,
                    Union)

import grpc
import numpy as np

from ringattn._proto.attention.v1 import attention_service_pb2 as pb
from ringattn._proto.attention.v1 import attention_service_pb2_grpc as pb_grpc
from ringattn._proto.attention.v1 import tensor_pb2
from ringattn.errors import RingattnError, invalid
from ringattn.layer import Layer
from ringattn.region import SharedRegion
from ringattn.results import SHARD_LAYOUTS, BackwardResult, ForwardResult, PreparedBatch
from ringattn.wire import FLOAT_WIRE, NUMPY_DTYPES, Assembler, chunks, flag_last

T = TypeVar("T")
Session = Union[ForwardResult, str]
_MAX_REMEMBERED = 4096  # Handles whose dtype and shape backward() can look up.


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


def _float_wire(name: str, array: np.ndarray, dtype: Optional[str]) -> str:
    if dtype is not None:
        if dtype not in ("FP32", "FP16", "BF16"):
            raise invalid(f"dtype {dtype!r}: FP32, FP16 or BF16")
        if dtype == "BF16" and array.dtype != np.uint16:
            raise invalid(f"{name}: BF16 travels as uint16 arrays of bfloat16 bits, "
                          f"got {array.dtype}")
        return dtype
    if array.dtype == np.uint16:
        raise invalid(f"{name} is uint16: if these are bfloat16 bits, pass dtype='BF16'")
    wire = FLOAT_WIRE.get(array.dtype)
    if wire is None:
        raise invalid(f"{name}.dtype {array.dtype}: float32, float16, or uint16 bfloat16 "
                      "bits with dtype='BF16'")
    return wire


def _as_wire(name: str, array: Any, wire: str) -> np.ndarray:
    array = np.asarray(array)
    if wire == "BF16":
        if array.dtype != np.uint16:
            raise invalid(f"{name}: BF16 travels as uint16 bfloat16 bits, got {array.dtype}")
        return array
    if wire in ("FP32", "FP16") and not np.issubdtype(array.dtype, np.floating):
        raise invalid(f"{name}.dtype {array.dtype}: a float array for {wire}")
    return array.astype(NUMPY_DTYPES[wire], copy=False)


def _metadata(name: str, array: Any, wire: str, batch: int, seq: int) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != (batch, seq):
        raise invalid(f"{name} must be [B, S] = [{batch}, {seq}], got {list(array.shape)}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise invalid(f"{name}.dtype {array.dtype}: integers or bools")
    return array.astype(NUMPY_DTYPES[wire], copy=False)


def _integer_wire(name: str, array: np.ndarray) -> str:
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == np.uint64:
        raise invalid(f"{name}.dtype {array.dtype}: integers")
    return "INT64" if array.dtype.itemsize == 8 or array.dtype == np.uint32 else "INT32"


def _mask_wire(name: str, array: np.ndarray) -> str:
    """A mask's wire dtype: BOOL, INT32/INT64, FP32 or FP16; float64 travels as
    FP32 (an additive mask's 0 and -inf or lowest survive the cast), uint16 as
    integers (numpy has no bfloat16)."""
    if array.dtype == np.bool_:
        return "BOOL"
    if array.dtype == np.float16:
        return "FP16"
    if np.issubdtype(array.dtype, np.floating):
        return "FP32"
    if np.issubdtype(array.dtype, np.integer):
        return _integer_wire(name, array)
    raise invalid(f"{name}.dtype {array.dtype}: bools, integers or floats")


def _batch_tensor(name: str, value: Any, shapes: Sequence[Tuple[int, ...]], want: str,
                  wire_of: Callable[[str, np.ndarray], str]) -> Tuple[str, np.ndarray, str]:
    """(name, array in its wire dtype, wire) for a per-token tensor whose shape
    must be one of `shapes` (`want` says which, for the error)."""
    array = np.asarray(value)
    if array.shape not in shapes:
        raise invalid(f"{name} must be {want}, got {list(array.shape)}")
    wire = wire_of(name, array)
    return name, array.astype(NUMPY_DTYPES[wire], copy=False), wire


def _hf_metadata(attention_mask: Any, mm_token_type_ids: Any, packed_seq_ids: Any, batch: int,
                 seq: int) -> List[Tuple[str, np.ndarray, str]]:
    """The Hugging Face forms of a batch's metadata (SPEC §1), checked and in
    their wire dtypes: attention_mask [B, S] or [B, 1, S, S], the others [B, S]."""
    out: List[Tuple[str, np.ndarray, str]] = []
    if attention_mask is not None:
        out.append(_batch_tensor(
            "attention_mask", attention_mask, ((batch, seq), (batch, 1, seq, seq)),
            f"[B, S] = [{batch}, {seq}] or [B, 1, S, S] = [{batch}, 1, {seq}, {seq}]",
            _mask_wire))
    for name, value in (("mm_token_type_ids", mm_token_type_ids),
                        ("packed_seq_ids", packed_seq_ids)):
        if value is not None:
            out.append(_batch_tensor(name, value, ((batch, seq),), f"[B, S] = [{batch}, {seq}]",
                                     _integer_wire))
    return out


def _layout_proto(shard_layout: str) -> int:
    if shard_layout not in SHARD_LAYOUTS:
        raise invalid(f"shard_layout {shard_layout!r}: one of {sorted(SHARD_LAYOUTS)}")
    return SHARD_LAYOUTS[shard_layout]


def _check_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Tuple[int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            want = "[B, H, S, D]" if name == "q" else "[B, Hkv, S, D]"
            raise invalid(f"{name} must be 4-D {want}, got shape {list(t.shape)}")
        if min(t.shape) <= 0:
            raise invalid(f"{name} has an empty dimension: {list(t.shape)}")
    B, H, S, D = q.shape
    if k.shape != v.shape:
        raise invalid(f"k {list(k.shape)} and v {list(v.shape)} differ")
    if (k.shape[0], k.shape[2], k.shape[3]) != (B, S, D):
        raise invalid(f"k/v {list(k.shape)} must be [B, Hkv, S, D] with q's B, S, D "
                      f"{[B, S, D]}")
    if H % k.shape[1]:
        raise invalid(f"q heads {H} must be a multiple of kv heads {k.shape[1]}")
    return B, H, k.shape[1], S, D


Releasable = Union[str, "concurrent.futures.Future[ForwardResult]"]


def _release_loop(handles: "queue.SimpleQueue[Optional[Releasable]]",
                  stub: pb_grpc.AttentionServiceStub, timeout: float) -> None:
    """Releases handles queued by finalizers, off the thread that dropped them;
    a queued future (an async forward nobody waited for) is released once done."""
    while True:
        handle = handles.get()
        if handle is None:
            return
        if isinstance(handle, concurrent.futures.Future):
            try:
                handle = handle.result().handle
            except Exception:  # noqa: BLE001 (a failed forward left no session)
                continue
        try:
            stub.Release(pb.ReleaseRequest(handle=handle), timeout=timeout)
        except grpc.RpcError:
            pass  # Gone already, or the coordinator is: it expires the session itself.
        except ValueError:
            return  # The channel was closed.


class Client:
    """Forward, backward, release and status against one coordinator.

    address: "host:port". timeout: default seconds per call. retries: extra
    tries on UNAVAILABLE for calls safe to repeat (see the module doc).
    max_workers: threads behind forward_async / backward_async.
    """

    def __init__(self, address: str, timeout: float = 600.0, *, retries: int = 3,
                 max_workers: int = 4, tls: bool = False, tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None, tls_key_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None, token: Optional[str] = None,
                 auth_token_file: Optional[str] = None) -> None:
        options: List[Tuple[str, Union[int, str]]] = [
            ("grpc.max_receive_message_length", 8 << 20),
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
        self._retries = max(0, retries)
        self._max_workers = max_workers
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._known: "collections.OrderedDict[str, ForwardResult]" = collections.OrderedDict()
        self._closed = False
        self._regions: Dict[str, SharedRegion] = {}  # Registered by this client; under _lock.
        # SimpleQueue.put is reentrant: finalizers and __del__ may call it at any time.
        self._to_release: "queue.SimpleQueue[Optional[Releasable]]" = queue.SimpleQueue()
        self._releaser = threading.Thread(target=_release_loop, name="ringattn-release",
                                          args=(self._to_release, self._stub, 30.0), daemon=True)
        self._releaser.start()
        weakref.finalize(self, self._to_release.put, None)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Finishes queued releases and async calls, then closes the channel."""
        if self._closed:
            return
        for name in list(self._regions):
            try:  # The service would expire them; unregistering frees them now.
                self.unregister_region(name, timeout=5.0)
            except RingattnError:
                pass
        self._closed = True
        self._to_release.put(None)
        self._releaser.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls --------------------------------------------------------------

    def forward(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                layer: Optional[Layer] = None, dtype: Optional[str] = None,
                doc_ids: Optional[np.ndarray] = None, vision_groups: Optional[np.ndarray] = None,
                padding_mask: Optional[np.ndarray] = None, *,
                attention_mask: Optional[np.ndarray] = None,
                mm_token_type_ids: Optional[np.ndarray] = None,
                packed_seq_ids: Optional[np.ndarray] = None, shard_layout: str = "auto",
                out: Optional[np.ndarray] = None, lse: Optional[np.ndarray] = None,
                timeout: Optional[float] = None) -> ForwardResult:
        """Opens a session. q: [B, H, S, D]; k, v: [B, Hkv, S, D], all in one dtype
        (float32, float16, or uint16 bfloat16 bits with dtype='BF16'). doc_ids
        [B, S] (1-based documents, 0 = padding), vision_groups [B, S] (-1 =
        none), padding_mask [B, S] (1 = padding).

        Or the metadata as a Hugging Face batch has it, derived by the
        coordinator: attention_mask [B, S] (nonzero = real token) or
        [B, 1, S, S] (must equal the layer's mask), mm_token_type_ids [B, S]
        (1 image, 2 video: each run is a vision group), packed_seq_ids [B, S]
        (documents). shard_layout: "auto", "contiguous" or "zigzag" (the
        results are the same; only balance and traffic differ).

        out [B, H, S, D] (q's dtype) and lse [B, H, S] float32: arrays of a
        registered region the workers write the outputs into, instead of
        streaming them back; the result then holds these arrays."""
        layout = _layout_proto(shard_layout)
        q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
        B, H, Hkv, S, D = _check_qkv(q, k, v)
        wire = _float_wire("q", q, dtype)
        tensors = [("q", _as_wire("q", q, wire), wire), ("k", _as_wire("k", k, wire), wire),
                   ("v", _as_wire("v", v, wire), wire)]
        if wire != "BF16" and dtype is None and not (q.dtype == k.dtype == v.dtype):
            raise invalid(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
        for name, array, meta_wire in (("doc_ids", doc_ids, "INT32"),
                                       ("vision_groups", vision_groups, "INT32"),
                                       ("padding_mask", padding_mask, "BOOL")):
            if array is not None:
                tensors.append((name, _metadata(name, array, meta_wire, B, S), meta_wire))
        tensors += _hf_metadata(attention_mask, mm_token_type_ids, packed_seq_ids, B, S)
        outputs = {name: self._output_ref(name, array, shape, NUMPY_DTYPES[out_wire])
                   for name, array, shape, out_wire in (("out", out, (B, H, S, D), wire),
                                                        ("lse", lse, (B, H, S), "FP32"))
                   if array is not None}
        header = pb.ForwardHeader(layer=(layer or Layer()).to_proto(), dtype=wire, batch=B,
                                  heads=H, kv_heads=Hkv, seq_len=S, head_dim=D, layout=layout,
                                  outputs=list(outputs.values()))
        refs = [(name, array, tensor_wire, self._input_ref(name, array))
                for name, array, tensor_wire in tensors]
        sent_all = [False]

        def requests() -> Iterator[pb.ForwardRequest]:
            yield pb.ForwardRequest(header=header)
            for name, array, tensor_wire, ref in refs:
                if ref is not None:
                    yield pb.ForwardRequest(tensor_ref=ref)
                    continue
                for chunk in chunks(name, tensor_wire, array):
                    yield pb.ForwardRequest(chunk=chunk)

        def attempt(remaining: float) -> ForwardResult:
            sent_all[0] = False
            assembler, session, metrics = Assembler(), None, pb.CallMetrics()
            stream = flag_last(requests(), lambda: sent_all.__setitem__(0, True))
            for resp in self._stub.Forward(stream, timeout=remaining):
                which = resp.WhichOneof("part")
                if which == "session":
                    session = resp.session
                elif which == "chunk":
                    assembler.add(resp.chunk)
                elif which == "metrics":
                    metrics = resp.metrics
            if session is None:
                raise RingattnError(grpc.StatusCode.INTERNAL, "the answer lacks a session")
            return ForwardResult(session.handle,
                                 out if out is not None else assembler.take("out"),
                                 lse if lse is not None else assembler.take("lse"),
                                 session.padded_len, metrics, dtype=wire, q_shape=(B, H, S, D),
                                 kv_heads=Hkv, client=self)

        result = self._call(attempt, lambda: not sent_all[0], timeout)
        self._remember(result)
        return result

    def backward(self, session: Session, dout: np.ndarray, dtype: Optional[str] = None, *,
                 dq: Optional[np.ndarray] = None, dk: Optional[np.ndarray] = None,
                 dv: Optional[np.ndarray] = None,
                 timeout: Optional[float] = None) -> BackwardResult:
        """dout: [B, H, S, D] in the forward's dtype. session: the ForwardResult,
        or its handle (then the dtype is the one this client's forward() saw).
        dq [B, H, S, D], dk and dv [B, Hkv, S, D], float32: arrays of a
        registered region to write the gradients into, as forward's out=."""
        known = session if isinstance(session, ForwardResult) else self._known.get(session)
        handle = session.handle if isinstance(session, ForwardResult) else session
        dout = np.asarray(dout)
        if known is not None:
            if dtype is not None and dtype != known.dtype:
                raise invalid(f"dtype {dtype!r}, but the session is {known.dtype}")
            wire = known.dtype
            if dout.shape != known.q_shape:
                raise invalid(f"dout must be [B, H, S, D] = {list(known.q_shape)}, "
                              f"got {list(dout.shape)}")
        else:
            wire = _float_wire("dout", dout, dtype)
            if dout.ndim != 4:
                raise invalid(f"dout must be 4-D [B, H, S, D], got shape {list(dout.shape)}")
        dout = _as_wire("dout", dout, wire)
        B, H, S, D = dout.shape
        kv_shape = None if known is None else (B, known.kv_heads, S, D)
        given = {"dq": dq, "dk": dk, "dv": dv}
        outputs = [self._output_ref(name, array, dout.shape if name == "dq" else kv_shape,
                                    np.dtype(np.float32))
                   for name, array in given.items() if array is not None]
        dout_ref = self._input_ref("dout", dout)
        sent_all = [False]

        def requests() -> Iterator[pb.BackwardRequest]:
            yield pb.BackwardRequest(header=pb.BackwardHeader(
                handle=handle, kv_heads=known.kv_heads if known is not None else 0,
                outputs=outputs))
            if dout_ref is not None:
                yield pb.BackwardRequest(tensor_ref=dout_ref)
                return
            for chunk in chunks("dout", wire, dout):
                yield pb.BackwardRequest(chunk=chunk)

        def attempt(remaining: float) -> BackwardResult:
            sent_all[0] = False
            assembler, metrics = Assembler(), pb.CallMetrics()
            stream = flag_last(requests(), lambda: sent_all.__setitem__(0, True))
            for resp in self._stub.Backward(stream, timeout=remaining):
                if resp.WhichOneof("part") == "chunk":
                    assembler.add(resp.chunk)
                else:
                    metrics = resp.metrics
            got = [array if array is not None else assembler.take(name)
                   for name, array in given.items()]
            return BackwardResult(*got, metrics)

        return self._call(attempt, lambda: not sent_all[0], timeout)

    def release(self, session: Session, *, timeout: Optional[float] = None) -> None:
        """Frees the session's state. NOT_FOUND when it is unknown or already gone."""
        handle = session.handle if isinstance(session, ForwardResult) else session
        with self._lock:
            self._known.pop(handle, None)
        self._delete(lambda remaining: self._stub.Release(pb.ReleaseRequest(handle=handle),
                                                          timeout=remaining), timeout)

    def release_later(self, handle: Releasable) -> None:
        """Queues a release (of a handle, or of a forward_async future's session
        once it is done) for a background thread. Safe from finalizers and
        __del__: it only appends to a reentrant queue. Errors are dropped."""
        self._to_release.put(handle)

    def status(self, *, timeout: Optional[float] = None) -> pb.ClusterStatusResponse:
        return self._call(
            lambda remaining: self._stub.ClusterStatus(pb.ClusterStatusRequest(),
                                                       timeout=remaining),
            lambda: True, 10.0 if timeout is None else timeout)

    # -- shared-memory regions --------------------------------------------

    def register_region(self, region: SharedRegion, name: Optional[str] = None, *,
                        timeout: Optional[float] = None) -> str:
        """Registers the region with the service under `name` (default: its
        object's name without the slash), owned by this client's identity;
        returns the name. The service must run on this host."""
        if not isinstance(region, SharedRegion):
            raise TypeError(f"region must be a ringattn.SharedRegion, got {type(region).__name__}")
        name = region.shm_name[1:] if name is None else name
        request = pb.RegisterRegionRequest(name=name, shm_name=region.shm_name,
                                           byte_size=region.byte_size)
        retried = [False]

        def attempt(remaining: float) -> None:
            try:
                self._stub.RegisterRegion(request, timeout=remaining)
            except grpc.RpcError as err:
                # A retry that finds it taken: the first try got through if it is ours.
                if not (retried[0] and err.code() == grpc.StatusCode.ALREADY_EXISTS and any(
                        r.name == name and r.shm_name == region.shm_name
                        for r in self.list_regions(timeout=remaining))):
                    raise
            finally:
                retried[0] = True

        self._call(attempt, lambda: True, 30.0 if timeout is None else timeout)
        with self._lock:
            self._regions[name] = region
        return name

    def unregister_region(self, name: Union[str, SharedRegion], *,
                          timeout: Optional[float] = None) -> None:
        """Unregisters a region (by name, or the region registered by this
        client); NOT_FOUND when the service has none of this client's so
        named. The region itself stays open."""
        if isinstance(name, SharedRegion):
            with self._lock:
                names = [n for n, r in self._regions.items() if r is name]
            if not names:
                raise invalid(f"{name} is not registered by this client")
            name = names[0]
        with self._lock:
            self._regions.pop(name, None)
        request = pb.UnregisterRegionRequest(name=name)
        self._delete(lambda remaining: self._stub.UnregisterRegion(request, timeout=remaining),
                     timeout)

    def list_regions(self, *, timeout: Optional[float] = None) -> List[pb.RegionStatus]:
        """This client's regions, as the service holds them (name, shm_name,
        byte_size); an idle region expires there."""
        return list(self._call(
            lambda remaining: self._stub.ListRegions(pb.ListRegionsRequest(),
                                                     timeout=remaining).regions,
            lambda: True, 30.0 if timeout is None else timeout))

    def prepare_batch(self, *, input_ids: Optional[np.ndarray] = None,
                      inputs_embeds: Optional[np.ndarray] = None,
                      labels: Optional[np.ndarray] = None, loss_mask: Optional[np.ndarray] = None,
                      position_ids: Optional[np.ndarray] = None,
                      attention_mask: Optional[np.ndarray] = None,
                      mm_token_type_ids: Optional[np.ndarray] = None,
                      packed_seq_ids: Optional[np.ndarray] = None, pad_token_id: int = 0,
                      cp: int = 0, include_shards: bool = False, embeds_dtype: Optional[str] = None,
                      timeout: Optional[float] = None) -> PreparedBatch:
        """A training batch padded and sharded as the ring computes it (SPEC §1),
        so the caller's loss and RoPE agree with the attention.

        Exactly one of input_ids [B, S] (integers) and inputs_embeds [B, S, E]
        (float32, float16, or uint16 bfloat16 bits with embeds_dtype='BF16');
        labels [B, S] and/or loss_mask [B, S]; optional position_ids [B, S] or
        [3, B, S]; attention_mask, mm_token_type_ids, packed_seq_ids as for
        forward(). cp: 0 for the ring's, else a ring of that many ranks.
        include_shards: also every rank's contiguous slice. Nothing is kept on
        the service, so the call is retried on UNAVAILABLE like a status."""
        if (input_ids is None) == (inputs_embeds is None):
            raise invalid("give exactly one of input_ids [B, S] and inputs_embeds [B, S, E]")
        if labels is None and loss_mask is None:
            raise invalid("give labels or loss_mask (or both), [B, S]")
        if cp < 0:
            raise invalid(f"cp must be 0 (the ring's) or positive, got {cp}")
        tensors: List[Tuple[str, np.ndarray, str]] = []
        if input_ids is not None:
            ids = np.asarray(input_ids)
            if ids.ndim != 2 or min(ids.shape) <= 0:
                raise invalid(f"input_ids must be [B, S], got {list(ids.shape)}")
            B, S = ids.shape
            wire = _integer_wire("input_ids", ids)
            tensors.append(("input_ids", ids.astype(NUMPY_DTYPES[wire], copy=False), wire))
        else:
            embeds = np.asarray(inputs_embeds)
            if embeds.ndim != 3 or min(embeds.shape) <= 0:
                raise invalid(f"inputs_embeds must be [B, S, E], got {list(embeds.shape)}")
            B, S = embeds.shape[:2]
            wire = _float_wire("inputs_embeds", embeds, embeds_dtype)
            tensors.append(("inputs_embeds", _as_wire("inputs_embeds", embeds, wire), wire))
        per_token = f"[B, S] = [{B}, {S}]"
        if labels is not None:
            tensors.append(_batch_tensor("labels", labels, ((B, S),), per_token, _integer_wire))
        if loss_mask is not None:
            tensors.append(_batch_tensor("loss_mask", loss_mask, ((B, S),), per_token, _mask_wire))
        if position_ids is not None:
            tensors.append(_batch_tensor("position_ids", position_ids, ((B, S), (3, B, S)),
                                         f"{per_token} or [3, B, S]", _integer_wire))
        tensors += _hf_metadata(attention_mask, mm_token_type_ids, packed_seq_ids, B, S)
        header = pb.PrepareBatchHeader(pad_token_id=pad_token_id, cp=cp,
                                       include_shards=include_shards)

        def requests() -> Iterator[pb.PrepareBatchRequest]:
            yield pb.PrepareBatchRequest(header=header)
            for name, array, tensor_wire in tensors:
                for chunk in chunks(name, tensor_wire, array):
                    yield pb.PrepareBatchRequest(chunk=chunk)

        def attempt(remaining: float) -> PreparedBatch:
            assembler, info = Assembler(), None
            for resp in self._stub.PrepareBatch(requests(), timeout=remaining):
                if resp.WhichOneof("part") == "info":
                    info = resp.info
                else:
                    assembler.add(resp.chunk)
            if info is None:
                raise RingattnError(grpc.StatusCode.INTERNAL, "the answer lacks its info")
            return PreparedBatch.from_answer(info, assembler)

        return self._call(attempt, lambda: True, timeout)

    # -- non-blocking forms -------------------------------------------------

    def forward_async(self, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[ForwardResult]":
        """forward() on a worker thread; the arrays are read there, so keep them
        unchanged until the future is done."""
        return self._executor().submit(self.forward, *args, **kwargs)

    def backward_async(self, *args: Any,
                       **kwargs: Any) -> "concurrent.futures.Future[BackwardResult]":
        return self._executor().submit(self.backward, *args, **kwargs)

    # -- internals ----------------------------------------------------------

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="ringattn-call")
            return self._pool

    def _input_ref(self, name: str, array: np.ndarray) -> Optional[tensor_pb2.TensorRef]:
        """A reference to the array when it lies in a region this client
        registered, else None (it is streamed)."""
        with self._lock:
            regions = list(self._regions.items())
        for region_name, region in regions:
            where = region.locate(array)
            if where is not None:
                return tensor_pb2.TensorRef(name=name, region=region_name, offset=where[0],
                                            byte_size=where[1])
        return None

    def _output_ref(self, name: str, array: Any, shape: Optional[Tuple[int, ...]],
                    dtype: np.dtype) -> tensor_pb2.TensorRef:
        """An output array's reference: it must be a registered region's array
        of the output's shape (when known) and dtype."""
        if not isinstance(array, np.ndarray):
            raise invalid(f"{name} must be a numpy array of a registered region, "
                          f"got {type(array).__name__}")
        if shape is not None and array.shape != tuple(shape):
            raise invalid(f"{name} must be {list(shape)}, got {list(array.shape)}")
        if array.dtype != dtype:
            raise invalid(f"{name}.dtype must be {dtype}, got {array.dtype}")
        if not array.flags.writeable:
            raise invalid(f"{name} is read-only")
        ref = self._input_ref(name, array)
        if ref is None:
            raise invalid(f"{name} does not lie in a region this client registered "
                          "(SharedRegion.ndarray, then register_region)")
        return ref

    def _remember(self, result: ForwardResult) -> None:
        # Only what backward() needs, not the outputs.
        light = ForwardResult(result.handle, np.empty(0), np.empty(0), result.padded_len,
                              pb.CallMetrics(), dtype=result.dtype, q_shape=result.q_shape,
                              kv_heads=result.kv_heads)
        with self._lock:
            self._known[result.handle] = light
            while len(self._known) > _MAX_REMEMBERED:
                self._known.popitem(last=False)

    def _delete(self, rpc: Callable[[float], Any], timeout: Optional[float]) -> None:
        """A call that removes something, retried on UNAVAILABLE: NOT_FOUND on a
        retry means the first try got through, and counts as success."""
        retried = [False]

        def attempt(remaining: float) -> None:
            try:
                rpc(remaining)
            except grpc.RpcError as err:
                if not (retried[0] and err.code() == grpc.StatusCode.NOT_FOUND):
                    raise
            finally:
                retried[0] = True

        self._call(attempt, lambda: True, 30.0 if timeout is None else timeout)

    def _call(self, attempt: Callable[[float], T], may_retry: Callable[[], bool],
              timeout: Optional[float]) -> T:
        """attempt(seconds left) until it succeeds, fails for good, or time runs out."""
        total = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        backoff = 0.05
        for tries_left in range(self._retries, -1, -1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RingattnError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no answer within {total} s")
            try:
                return attempt(remaining)
            except RingattnError:
                raise
            except grpc.RpcError as err:
                error = RingattnError.from_rpc(err)
                if (error.code() != grpc.StatusCode.UNAVAILABLE or tries_left == 0
                        or not may_retry()):
                    raise error from None
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 1.0)
        raise AssertionError("unreachable")


__all__: Sequence[str] = ["Client", "first_token"]
