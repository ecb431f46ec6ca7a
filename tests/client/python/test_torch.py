"""ringattn.torch against a live local cluster.

The oracle is fp64 attention in torch: torch.nn.functional.
scaled_dot_product_attention with the equivalent boolean mask where torch
has it (torch >= 2.1), otherwise the same math written out, softmax(q k^T *
scale + mask) v; its gradients come from torch autograd in fp64.

Tolerances: the service computes in fp32 (fp32 products, fp32 online-softmax
accumulation over at most 64 keys here), so fp32 results are held to 1e-5 of
the largest reference value, as the numpy tests are. bf16 and fp16 results
are rounded to 8 and 11 significant bits on the way out, which alone moves a
value by up to 2^-9 and 2^-12 of itself; they are held to 1e-2 and 2e-3.
"""

import gc
import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from conftest import wait_for_sessions  # noqa: E402
from ringattn import Client, Layer, RingattnError  # noqa: E402
from ringattn.torch import (RingAttention, prepare_batch, ring_attention,  # noqa: E402
                            ring_attention_async)

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


@pytest.fixture(scope="module")
def client(address):
    with Client(address) as c:
        yield c


def allowed(doc, pad, window):
    """[B, 1, S, S] bool, True = attends: causal, within the window, same
    document, neither side padding; a padding query attends only to itself
    so the oracle stays finite (the test drops those rows)."""
    S = doc.shape[1]
    i = torch.arange(S)
    ok = i[None, :] <= i[:, None]
    if window:
        ok = ok & (i[:, None] - i[None, :] < window)
    ok = ok[None] & (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] > 0)
    ok = ok & ~pad[:, :, None] & ~pad[:, None, :]
    ok = ok | (pad[:, :, None] & torch.eye(S, dtype=torch.bool)[None])
    return ok[:, None]


def oracle(q, k, v, mask, scale, pad):
    """fp64 attention; q [B, H, S, D], k, v [B, Hkv, S, D]; padding rows zeroed."""
    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if HAVE_SDPA:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, -math.inf)
        out = torch.softmax(s, dim=-1) @ v
    return out * (~pad)[:, None, :, None]


def rel_err(got, want):
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max()).item()


def batch(seed, B=2, H=4, Hkv=2, S=64, D=16):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, H, S, D, generator=g, dtype=torch.float64) * 2 - 1
    k = torch.rand(B, Hkv, S, D, generator=g, dtype=torch.float64) * 2 - 1
    v = torch.rand(B, Hkv, S, D, generator=g, dtype=torch.float64) * 2 - 1
    dout = torch.rand(B, H, S, D, generator=g, dtype=torch.float64) * 2 - 1
    doc = torch.zeros(B, S, dtype=torch.int32)
    doc[:, :S // 2], doc[:, S // 2:S - 8] = 1, 2
    doc[1:, :] = 1  # Later sequences: one document, no padding.
    pad = doc == 0
    return q, k, v, dout, doc, pad


def grads_of(out, dout, *inputs):
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("window", [0, 16])
def test_matches_sdpa_in_fp32(client, layout, window):
    q, k, v, dout, doc, pad = batch(window)
    scale = 0.3
    layer = Layer(sliding=window > 0, window=window or 512, scale=scale)
    # The service sees fp32; the oracle the same values in fp64.
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref_in = [t.detach().double().requires_grad_() for t in (q32, k32, v32)]
    want = oracle(*ref_in, allowed(doc, pad, window), scale, pad)
    want_grads = grads_of(want, dout, *ref_in)
    if layout == "bshd":
        args = [t.transpose(1, 2) for t in (q32, k32, v32)]
        out = ring_attention(*args, client, layer=layer, layout="bshd", doc_ids=doc,
                             padding_mask=pad).transpose(1, 2)
    else:
        out = ring_attention(q32, k32, v32, client, layer=layer, doc_ids=doc, padding_mask=pad)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert rel_err(out, want) < 1e-5
    got_grads = grads_of(out, dout.float(), q32, k32, v32)
    for got, ref in zip(got_grads, want_grads):
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_in_and_out(client, dtype, tol):
    q, k, v, dout, doc, pad = batch(3, B=1, S=48)
    doc, pad = torch.ones_like(doc), torch.zeros_like(pad)
    low = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    ref_in = [t.detach().double().requires_grad_() for t in low]
    want = oracle(*ref_in, allowed(doc, pad, 0), 0.25, pad)
    dout_low = dout.to(dtype)
    want_grads = grads_of(want, dout_low.double(), *ref_in)
    out = ring_attention(*low, client, layer=Layer(scale=0.25))
    assert out.dtype == dtype
    assert rel_err(out, want) < tol
    for got, ref in zip(grads_of(out, dout_low, *low), want_grads):
        assert got.dtype == dtype
        assert rel_err(got, ref) < tol


def test_jacobian_matches_the_fp64_oracle(client):
    """gradcheck-style: every row of the service's Jacobian (one backward per
    output element, all on one session) against the oracle's analytic fp64
    Jacobian, itself checked by torch.autograd.gradcheck."""
    q, k, v, _, doc, pad = batch(11, B=1, H=2, Hkv=1, S=6, D=4)
    doc, pad = torch.ones_like(doc), torch.zeros_like(pad)
    mask = allowed(doc, pad, 0)
    ref_in = tuple(t.clone().requires_grad_() for t in (q, k, v))

    def f(*xs):
        return oracle(*xs, mask, 0.5, pad)

    assert torch.autograd.gradcheck(f, ref_in, eps=1e-6, atol=1e-8)
    want = torch.autograd.functional.jacobian(f, ref_in)
    ins = [t.float().requires_grad_() for t in (q, k, v)]
    out = ring_attention(*ins, client, layer=Layer(scale=0.5), release_after_backward=False)
    rows = [[] for _ in ins]
    for i in range(out.numel()):
        e = torch.zeros(out.numel())
        e[i] = 1
        for row, g in zip(rows, torch.autograd.grad(out, ins, e.view_as(out),
                                                    retain_graph=True)):
            row.append(g)
    for row, ref in zip(rows, want):
        got = torch.stack(row).view(ref.shape)
        assert rel_err(got, ref) < 1e-5


class ToyModel(torch.nn.Module):
    """Two attention blocks (projections in, ring attention, projection out)."""

    def __init__(self, attention, width=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, width // heads
        self.qkv = torch.nn.ModuleList(
            torch.nn.Linear(width, (heads + 2 * kv_heads) * self.dim) for _ in range(2))
        self.out = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(2))
        self.attention = attention  # [B, S, H, D] in and out

    def forward(self, x):  # x [B, S, width]
        B, S, _ = x.shape
        for qkv, out in zip(self.qkv, self.out):
            h = qkv(x).view(B, S, self.heads + 2 * self.kv_heads, self.dim)
            q, k, v = h.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
            x = x + out(self.attention(q, k, v).reshape(B, S, -1))
        return x


def test_loss_backward_through_a_two_layer_model(client):
    torch.manual_seed(0)
    S = 40
    service_model = ToyModel(RingAttention(client, Layer(scale=0.35), layout="bshd"))
    ones, no_pad = torch.ones(1, S, dtype=torch.int32), torch.zeros(1, S, dtype=torch.bool)

    def oracle_bshd(q, k, v):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return oracle(q, k, v, allowed(ones, no_pad, 0), 0.35, no_pad).transpose(1, 2)

    oracle_model = ToyModel(oracle_bshd).double()
    oracle_model.load_state_dict(service_model.state_dict())
    x = torch.rand(1, S, 32) * 2 - 1
    target = torch.rand(1, S, 32)
    loss = F.mse_loss(service_model(x), target)
    loss.backward()
    want = F.mse_loss(oracle_model(x.double()), target.double())
    want.backward()
    assert abs(loss.item() - want.item()) < 1e-5 * abs(want.item())
    for (name, p), ref in zip(service_model.named_parameters(), oracle_model.parameters()):
        assert p.grad is not None, name
        assert rel_err(p.grad, ref.grad) < 1e-4, name


def session_qkv(requires_grad=True):
    q = torch.rand(1, 2, 16, 8, requires_grad=requires_grad)
    kv = torch.rand(1, 1, 16, 8, requires_grad=requires_grad)
    return q, kv, kv


def test_sessions_are_released(client):
    base = wait_for_sessions(client, 0)
    assert base == 0, "sessions left open before the test"
    # After backward.
    out = ring_attention(*session_qkv(), client)
    assert client.status().open_sessions == 1
    out.sum().backward()
    assert wait_for_sessions(client, 0) == 0
    # When the graph is dropped without a backward.
    out = ring_attention(*session_qkv(), client)
    handle = out.grad_fn.session.handle
    del out
    gc.collect()
    assert wait_for_sessions(client, 0) == 0
    with pytest.raises(RingattnError) as err:
        client.release(handle)
    assert err.value.code().name == "NOT_FOUND"

    # When an exception unwinds the step.
    def step():
        out = ring_attention(*session_qkv(), client)
        raise RuntimeError(f"loss failed for {out.shape}")

    with pytest.raises(RuntimeError):
        step()
    gc.collect()
    assert wait_for_sessions(client, 0) == 0
    # When no gradient is wanted, at once.
    with torch.no_grad():
        out = ring_attention(*session_qkv(), client)
    assert wait_for_sessions(client, 0) == 0 and out.shape == (1, 2, 16, 8)
    # An async forward nobody waited for.
    pending = ring_attention_async(*session_qkv(), client)
    del pending
    gc.collect()
    assert wait_for_sessions(client, 0) == 0


def test_async_matches_sync(client):
    q, k, v, dout, doc, pad = batch(21, B=1, S=32)
    ins_a = [t.float().requires_grad_() for t in (q, k, v)]
    ins_b = [t.float().requires_grad_() for t in (q, k, v)]
    pending = [ring_attention_async(*ins_a, client, doc_ids=doc, padding_mask=pad)
               for _ in range(2)]
    outs = [p.wait() for p in pending]
    want = ring_attention(*ins_b, client, doc_ids=doc, padding_mask=pad)
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    (outs[0] * dout.float()).sum().backward()
    (want * dout.float()).sum().backward()
    for a, b in zip(ins_a, ins_b):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    outs[1].sum().backward()
    assert wait_for_sessions(client, 0) == 0


def test_bad_inputs_are_invalid_argument(client):
    q, k, v = session_qkv()
    with pytest.raises(RingattnError, match="q must be 4-D"):
        ring_attention(q[0], k, v, client)
    with pytest.raises(RingattnError, match="float64"):
        ring_attention(q.double(), k.double(), v.double(), client)
    with pytest.raises(RingattnError, match="layout"):
        ring_attention(q, k, v, client, layout="bsd")
    with pytest.raises(RingattnError, match="dtypes differ"):
        ring_attention(q, k.half(), v, client)


@pytest.mark.parametrize("shard_layout", ["contiguous", "zigzag"])
def test_forced_shard_layouts_match_the_oracle(client, shard_layout):
    q, k, v, dout, doc, pad = batch(31)
    layer = Layer(scale=0.3)
    ins = [t.float().requires_grad_() for t in (q, k, v)]
    ref_in = [t.detach().double().requires_grad_() for t in ins]
    want = oracle(*ref_in, allowed(doc, pad, 0), 0.3, pad)
    want_grads = grads_of(want, dout, *ref_in)
    attn = RingAttention(client, layer, shard_layout=shard_layout)
    out = attn(*ins, doc_ids=doc, padding_mask=pad)
    assert rel_err(out, want) < 1e-5
    for got, ref in zip(grads_of(out, dout.float(), *ins), want_grads):
        assert rel_err(got, ref) < 1e-5
    with pytest.raises(TypeError, match="doc_id"):
        attn(*ins, doc_id=doc)
    # The setting reaches the client, which checks it before sending.
    with pytest.raises(RingattnError, match="shard_layout 'ring'"):
        RingAttention(client, layer, shard_layout="ring")(*ins)


def test_hf_attention_mask_and_packed_ids(client):
    """A Hugging Face batch's own tensors: attention_mask [B, S] (1 = token)
    and packed_seq_ids; the same as the explicit metadata, bit for bit."""
    q, k, v, dout, doc, pad = batch(33)
    ins = [t.float() for t in (q, k, v)]
    want = oracle(*(t.double() for t in ins), allowed(doc, pad, 16), 0.5, pad)
    layer = Layer(sliding=True, window=16, scale=0.5)
    explicit = ring_attention(*ins, client, layer=layer, doc_ids=doc, padding_mask=pad)
    hf = ring_attention(*ins, client, layer=layer, attention_mask=(~pad).long(),
                        packed_seq_ids=doc.long())
    torch.testing.assert_close(hf, explicit, rtol=0, atol=0)
    assert rel_err(hf, want) < 1e-5
    # The [B, 1, S, S] additive mask HF builds for a bf16 model: 0 attends, the
    # dtype's lowest does not (padding rows attend to nothing).
    attend = allowed(doc, pad, 16) & ~pad[:, None, :, None]
    lowest = torch.finfo(torch.bfloat16).min
    additive = torch.zeros(attend.shape, dtype=torch.bfloat16).masked_fill(~attend, lowest)
    hf4 = ring_attention(*ins, client, layer=layer, attention_mask=additive,
                         packed_seq_ids=doc.long())
    torch.testing.assert_close(hf4, explicit, rtol=0, atol=0)


def test_prepare_batch_gives_torch_tensors(client):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 1000, (2, 29), generator=g)
    labels = ids.roll(-1, 1)
    embeds = torch.rand(2, 29, 8, generator=g).to(torch.bfloat16)
    prepared = prepare_batch(client, input_ids=ids, labels=labels, pad_token_id=7,
                             include_shards=True)
    P = prepared.padded_len
    assert P >= 29 and P % prepared.cp == 0
    assert prepared["input_ids"].dtype == ids.dtype
    torch.testing.assert_close(prepared["input_ids"][:, :29], ids, rtol=0, atol=0)
    assert (prepared["input_ids"][:, 29:] == 7).all()
    assert (prepared["labels"][:, 29:] == -100).all()
    assert prepared["padding_mask"].dtype == torch.bool
    assert prepared["padding_mask"][:, 29:].all() and not prepared["padding_mask"][:, :29].any()
    L = prepared.shard_len
    for r, shard in enumerate(prepared.shards):
        torch.testing.assert_close(shard["input_ids"], prepared["input_ids"][:, r * L:(r + 1) * L],
                                   rtol=0, atol=0)
    e = prepare_batch(client, inputs_embeds=embeds, loss_mask=torch.ones(2, 29, dtype=torch.bool))
    assert e["inputs_embeds"].dtype == torch.bfloat16
    torch.testing.assert_close(e["inputs_embeds"][:, :29], embeds, rtol=0, atol=0)
    assert (e["inputs_embeds"][:, 29:] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_are_copied_out_and_back(client):
    q, k, v = (t.detach().cuda().requires_grad_() for t in session_qkv())
    out = ring_attention(q, k, v, client)
    assert out.device == q.device
    out.sum().backward()
    assert q.grad.device == q.device and k.grad.device == k.device
    cpu = ring_attention(*(t.detach().cpu() for t in (q, k, v)), client)
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=0)
