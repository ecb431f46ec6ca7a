"""Shared-memory regions from Python against a live local cluster (cp = 2):
tensors named by reference carry no bytes over gRPC and give the results
streamed ones do, bit for bit; the fp64 oracle holds them to 1e-5 (fp32
products and accumulation, as in test_client). Regions of another identity:
test_security (identities need tokens; without them, a host is one caller)."""

import grpc
import numpy as np
import pytest

from ringattn import Client, Layer, RingattnError, SharedRegion
from test_client import reference, rel_err

B, H, HKV, S, D = 1, 4, 2, 40, 16


class ChunkCounter:
    """Wraps a stub's streaming method: counts tensor chunks each way."""

    def __init__(self, method):
        self.method, self.sent, self.received = method, 0, 0

    def __call__(self, requests, **kwargs):
        def counted():
            for r in requests:
                self.sent += r.WhichOneof("part") == "chunk"
                yield r
        for resp in self.method(counted(), **kwargs):
            self.received += resp.WhichOneof("part") == "chunk"
            yield resp


def inputs(seed):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, HKV, S, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, HKV, S, D)).astype(np.float32)
    dout = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    doc = np.ones((B, S), np.int32)
    doc[0, 25:] = 2
    return q, k, v, dout, doc


def in_region(region, array):
    view = region.ndarray(array.shape, array.dtype)
    view[...] = array
    return view


def test_forward_and_backward_through_a_region_send_no_tensor_bytes(address):
    q, k, v, dout, doc = inputs(1)
    layer = Layer(sliding=True, window=12, scale=0.25)
    want = reference(q, k, v, doc, np.zeros((B, S), bool), 12, 0.25, dout)
    with Client(address) as client, SharedRegion(1 << 20) as region:
        with client.forward(q, k, v, layer, doc_ids=doc) as fwd:
            bwd = fwd.backward(dout)
            streamed = (fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv)
        name = client.register_region(region)
        assert [(r.name, r.shm_name, r.byte_size) for r in client.list_regions()] == [
            (name, region.shm_name, 1 << 20)]
        rq, rk, rv, rdout, rdoc = (in_region(region, a) for a in (q, k, v, dout, doc))
        out = region.ndarray((B, H, S, D), np.float32)
        lse = region.ndarray((B, H, S), np.float32)
        grads = [region.ndarray(a.shape, np.float32) for a in (q, k, v)]
        client._stub.Forward = fwd_count = ChunkCounter(client._stub.Forward)
        client._stub.Backward = bwd_count = ChunkCounter(client._stub.Backward)
        with client.forward(rq, rk, rv, layer, doc_ids=rdoc, out=out, lse=lse) as fwd:
            assert fwd.out is out and fwd.lse is lse
            bwd = fwd.backward(rdout, dq=grads[0], dk=grads[1], dv=grads[2])
        assert (fwd_count.sent, fwd_count.received, bwd_count.sent, bwd_count.received) == (
            0, 0, 0, 0)
        assert all(got is array for got, array in zip((bwd.dq, bwd.dk, bwd.dv), grads))
        for got, same, ref in zip((out, lse, *grads), streamed, want):
            assert np.array_equal(got, same)
            assert rel_err(got, ref) < 1e-5
        client.unregister_region(name)
        assert list(client.list_regions()) == []


def test_streamed_and_region_tensors_mix(address):
    q, k, v, dout, doc = inputs(2)
    with Client(address) as client, SharedRegion(1 << 20) as region:
        with client.forward(q, k, v) as fwd:
            want_out, want_lse = fwd.out, fwd.lse
            want = fwd.backward(dout)
        client.register_region(region, "mixed")
        lse = region.ndarray((B, H, S), np.float32)
        dk = region.ndarray((B, HKV, S, D), np.float32)
        client._stub.Forward = count = ChunkCounter(client._stub.Forward)
        with client.forward(in_region(region, q), k, v, lse=lse) as fwd:
            got = fwd.backward(dout, dk=dk)
        # k and v streamed (at least a chunk each), q by reference; out came back.
        assert count.sent == 2 and count.received == 1
        assert np.array_equal(fwd.out, want_out) and np.array_equal(lse, want_lse)
        for a, b in zip((got.dq, dk, got.dv), (want.dq, want.dk, want.dv)):
            assert np.array_equal(a, b)


def test_arrays_outside_a_registered_region_are_streamed_or_refused(address):
    q, k, v, _, _ = inputs(3)
    with Client(address) as client, SharedRegion(1 << 20) as region:
        unregistered = in_region(region, q)  # Not registered: streamed, as any array.
        with client.forward(unregistered, k, v) as fwd:
            assert rel_err(fwd.out, reference(q, k, v, np.ones((B, S)), np.zeros((B, S)), 0,
                                              D ** -0.5, np.zeros_like(q))[0]) < 1e-5
        with pytest.raises(RingattnError, match="does not lie in a region") as err:
            client.forward(q, k, v, out=np.empty_like(q))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        client.register_region(region)
        with pytest.raises(RingattnError, match=r"lse must be \[1, 4, 40\]"):
            client.forward(q, k, v, lse=region.ndarray((B, H, S + 1), np.float32))
        with pytest.raises(RingattnError, match="out.dtype must be float32"):
            client.forward(q, k, v, out=region.ndarray(q.shape, np.float16))
        assert client.status().open_sessions == 0


def test_a_closed_region_cannot_be_registered_and_close_unregisters(address):
    region = SharedRegion(4096)
    region.close()
    with Client(address) as client:
        with pytest.raises(RingattnError) as err:
            client.register_region(region)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="closed"):
            region.ndarray((4,), np.float32)
    with SharedRegion(4096) as region:
        client = Client(address)
        client.register_region(region, "kept")
        client.close()  # Unregisters what it registered.
        with Client(address) as again:
            again.register_region(region, "kept")  # The name is free again.
        with pytest.raises(ValueError, match="do not fit"):
            region.ndarray((2048,), np.float32)
