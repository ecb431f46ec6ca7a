"""The Python client against a live local cluster (coordinator + 2 workers)."""

import grpc
import numpy as np
import pytest

from conftest import wait_for_sessions
from ringattn import Client, Layer, RingattnError


def reference(q, k, v, doc, pad, window, scale, dout):
    """fp64 dense attention with the causal, window, document and padding rules
    of SPEC §2, and its analytic backward."""
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    B, H, S, D = q.shape
    group = H // k.shape[1]
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    pos = np.arange(S)
    allowed = (pos[None, :] <= pos[:, None])
    if window:
        allowed &= (pos[:, None] - pos[None, :] < window)
    allowed = allowed[None] & (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] > 0)
    allowed &= ~pad[:, :, None].astype(bool) & ~pad[:, None, :].astype(bool)
    allowed = allowed[:, None]  # [B, 1, S, S]
    s = np.where(allowed, scale * q @ kk.transpose(0, 1, 3, 2), -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(allowed, np.exp(s - m), 0.0)
    l = p.sum(-1, keepdims=True)
    p = np.where(l > 0, p / np.where(l > 0, l, 1), 0.0)
    out = p @ vv
    lse = np.where(l[..., 0] > 0, (m + np.log(np.where(l > 0, l, 1)))[..., 0], -np.inf)
    dp = dout @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dout * out).sum(-1, keepdims=True))
    dq = scale * ds @ kk
    dk = (scale * ds.transpose(0, 1, 3, 2) @ q).reshape(B, k.shape[1], group, S, D).sum(2)
    dv = (p.transpose(0, 1, 3, 2) @ dout).reshape(B, k.shape[1], group, S, D).sum(2)
    return out, lse, dq, dk, dv


def rel_err(got, want):
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite)
    return np.max(np.abs(got[finite] - want[finite])) / np.max(np.abs(want[finite]))


@pytest.mark.parametrize("window", [0, 24])
def test_round_trip_matches_reference(address, window):
    rng = np.random.default_rng(window)
    B, H, Hkv, S, D = 2, 4, 2, 100, 32
    q = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    dout = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    doc = np.zeros((B, S), np.int32)
    doc[:, :40], doc[:, 40:90] = 1, 2
    pad = (doc == 0).astype(np.uint8)
    with Client(address) as client:
        fwd = client.forward(q, k, v, Layer(sliding=window > 0, window=window or 512, scale=0.2),
                             doc_ids=doc, padding_mask=pad)
        bwd = client.backward(fwd.handle, dout)
        client.release(fwd.handle)
    want = reference(q, k, v, doc, pad, window, 0.2, dout)
    for got, ref in zip((fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv), want):
        assert got.shape == ref.shape
        assert rel_err(got, ref) < 1e-5
    assert np.all(fwd.out[:, :, 90:] == 0) and np.all(np.isneginf(fwd.lse[:, :, 90:]))
    assert len(fwd.metrics.ranks) == 2


def test_errors_are_ringattn_errors_with_code_and_message(address):
    q = np.zeros((1, 2, 8, 16), np.float32)
    kv = np.zeros((1, 1, 8, 16), np.float32)
    with Client(address) as client:
        with pytest.raises(RingattnError) as err:
            client.forward(q, kv, kv, Layer(dropout=0.1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dropout" in err.value.details()
        assert isinstance(err.value, grpc.RpcError)  # Code written for grpc errors still works.
        with pytest.raises(RingattnError) as err:
            client.backward("no-such-handle", q)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RingattnError) as err:
            client.release("no-such-handle")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.status().ring_ready


@pytest.mark.parametrize("bad, match", [
    (dict(q=np.zeros((2, 8, 16), np.float32)), r"q must be 4-D \[B, H, S, D\], got shape \[2, 8, 16\]"),
    (dict(k=np.zeros((1, 1, 9, 16), np.float32), v=np.zeros((1, 1, 9, 16), np.float32)),
     r"q's B, S, D"),
    (dict(v=np.zeros((1, 2, 8, 16), np.float32)), r"k \[1, 1, 8, 16\] and v \[1, 2, 8, 16\] differ"),
    (dict(q=np.zeros((1, 3, 8, 16), np.float32), k=np.zeros((1, 2, 8, 16), np.float32),
          v=np.zeros((1, 2, 8, 16), np.float32)), "multiple of kv heads"),
    (dict(q=np.zeros((1, 2, 8, 16), np.float64)), "float64"),
    (dict(q=np.zeros((1, 2, 8, 16), np.uint16)), "dtype='BF16'"),
    (dict(doc_ids=np.ones((1, 7), np.int32)), r"doc_ids must be \[B, S\] = \[1, 8\]"),
    (dict(padding_mask=np.zeros((1, 8), np.float32)), "padding_mask.dtype float32"),
])
def test_bad_shapes_and_dtypes_fail_before_sending(address, bad, match):
    args = dict(q=np.zeros((1, 2, 8, 16), np.float32), k=np.zeros((1, 1, 8, 16), np.float32),
                v=np.zeros((1, 1, 8, 16), np.float32))
    args.update(bad)
    with Client(address) as client:
        sent_before = client.status().open_sessions
        with pytest.raises(RingattnError, match=match) as err:
            client.forward(**args)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.status().open_sessions == sent_before


def test_backward_checks_dout_against_the_session(address):
    q = np.zeros((1, 2, 8, 16), np.float32)
    kv = np.zeros((1, 1, 8, 16), np.float32)
    with Client(address) as client, client.forward(q, kv, kv) as fwd:
        with pytest.raises(RingattnError, match=r"dout must be \[B, H, S, D\] = \[1, 2, 8, 16\]"):
            fwd.backward(np.zeros((1, 2, 8, 15), np.float32))
        with pytest.raises(RingattnError, match="the session is FP32"):
            client.backward(fwd.handle, q, dtype="FP16")


def to_bf16_bits(x):
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def test_bf16_round_trips_without_naming_the_dtype_twice(address):
    rng = np.random.default_rng(5)
    B, H, Hkv, S, D = 1, 2, 1, 40, 16
    q, k, v, dout = (to_bf16_bits(rng.uniform(-1, 1, shape)) for shape in
                     ((B, H, S, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, S, D)))
    doc = np.ones((B, S), np.int32)
    pad = np.zeros((B, S), np.uint8)
    with Client(address) as client:
        fwd = client.forward(q, k, v, Layer(scale=0.25), dtype="BF16")
        assert fwd.out.dtype == np.uint16 and fwd.dtype == "BF16"
        by_handle = client.backward(fwd.handle, dout)  # Was KeyError: dtype('uint16').
        by_result = fwd.backward(dout)
        fwd.release()
    want = reference(*(from_bf16_bits(x) for x in (q, k, v)), doc, pad, 0, 0.25,
                     from_bf16_bits(dout))
    # bf16 keeps 8 significant bits: the output's rounding (<= 2^-9 of each
    # value) bounds the error, and backward works from that stored bf16
    # output, so the FP32 gradients carry it too.
    assert rel_err(from_bf16_bits(fwd.out), want[0]) < 1e-2
    for bwd in (by_handle, by_result):
        for got, ref in zip((bwd.dq, bwd.dk, bwd.dv), want[2:]):
            assert got.dtype == np.float32 and rel_err(got, ref) < 1e-2


def test_session_as_context_manager_is_released(address):
    q = np.ones((1, 2, 8, 16), np.float32)
    kv = np.ones((1, 1, 8, 16), np.float32)
    with Client(address) as client:
        before = client.status().open_sessions
        with client.forward(q, kv, kv) as fwd:
            assert client.status().open_sessions == before + 1
        assert client.status().open_sessions == before
        with pytest.raises(RingattnError) as err:
            client.release(fwd.handle)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ZeroDivisionError):
            with client.forward(q, kv, kv):
                1 / 0
        assert wait_for_sessions(client, before) == before


def test_per_call_timeout(address):
    q = np.ones((1, 2, 256, 64), np.float32)
    kv = np.ones((1, 1, 256, 64), np.float32)
    with Client(address, timeout=60) as client:
        with pytest.raises(RingattnError) as err:
            client.forward(q, kv, kv, timeout=1e-4)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with client.forward(q, kv, kv, timeout=60) as fwd:
            assert fwd.out.shape == q.shape


def test_async_forms_match_the_blocking_ones(address):
    rng = np.random.default_rng(7)
    q = rng.uniform(-1, 1, (1, 2, 32, 16)).astype(np.float32)
    kv = rng.uniform(-1, 1, (1, 1, 32, 16)).astype(np.float32)
    with Client(address) as client:
        futures = [client.forward_async(q * (i + 1), kv, kv) for i in range(3)]
        results = [f.result(timeout=60) for f in futures]
        for i, fwd in enumerate(results):
            with client.forward(q * (i + 1), kv, kv) as want:
                np.testing.assert_array_equal(fwd.out, want.out)
            bwd = client.backward_async(fwd, np.ones_like(q)).result(timeout=60)
            assert bwd.dq.shape == q.shape
            fwd.release()


@pytest.mark.parametrize("window", [0, 24])
def test_every_shard_layout_gives_the_reference(address, window):
    rng = np.random.default_rng(100 + window)
    B, H, Hkv, S, D = 1, 2, 1, 64, 16
    q = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    dout = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    doc = np.ones((B, S), np.int32)
    want = reference(q, k, v, doc, np.zeros((B, S), bool), window, 0.25, dout)
    layer = Layer(sliding=window > 0, window=window or 512, scale=0.25)
    # auto: zigzag balances a full causal layer; a sliding one stays contiguous,
    # where the window bounds what travels.
    chosen = {}
    with Client(address) as client:
        for name in ("auto", "contiguous", "zigzag"):
            with client.forward(q, k, v, layer, shard_layout=name) as fwd:
                bwd = fwd.backward(dout)
            chosen[name] = fwd.shard_layout
            for got, ref in zip((fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv), want):
                assert rel_err(got, ref) < 1e-5, name
    assert chosen == {"auto": "contiguous" if window else "zigzag", "contiguous": "contiguous",
                      "zigzag": "zigzag"}
