"""The Python client against a live local cluster (coordinator + 2 workers)."""

import os
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest

from ringattn import Client, Layer

BIN_DIR = os.environ.get("RINGATTN_BIN_DIR", "build/release/bin")


@pytest.fixture(scope="module")
def address():
    proc = subprocess.Popen([os.path.join(BIN_DIR, "ringattn"), "serve", "--cp=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 90
    addr = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("coordinator at "):
            addr = line.split()[2].rstrip(";")
            break
    assert addr, "the local cluster did not come up"
    yield addr
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0


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


def test_errors_are_grpc_status_codes(address):
    q = np.zeros((1, 2, 8, 16), np.float32)
    kv = np.zeros((1, 1, 8, 16), np.float32)
    with Client(address) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.forward(q, kv, kv, Layer(dropout=0.1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dropout" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.backward("no-such-handle", q)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.status().ring_ready
