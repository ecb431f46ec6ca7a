"""Batches as training code holds them: Hugging Face metadata in Forward, and
PrepareBatch, against a live local cluster (cp = 2)."""

import grpc
import numpy as np
import pytest

from ringattn import Client, Layer, PreparedBatch, RingattnError
from test_client import reference, rel_err

B, H, HKV, S, D = 2, 2, 1, 30, 16


def qkv(seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32),
            rng.uniform(-1, 1, (B, HKV, S, D)).astype(np.float32),
            rng.uniform(-1, 1, (B, HKV, S, D)).astype(np.float32))


def packed():
    """Two documents per row, then right padding: doc ids and the HF mask."""
    doc = np.zeros((B, S), np.int64)
    doc[0, :12], doc[0, 12:26] = 1, 2
    doc[1, :20], doc[1, 20:30] = 1, 2
    return doc, (doc > 0).astype(np.int64)


def test_hf_metadata_computes_what_the_explicit_metadata_does(address):
    q, k, v = qkv(1)
    doc, attention_mask = packed()
    layer = Layer(scale=0.25)
    with Client(address) as client:
        with client.forward(q, k, v, layer, doc_ids=doc.astype(np.int32),
                            padding_mask=(doc == 0)) as explicit:
            pass
        with client.forward(q, k, v, layer, attention_mask=attention_mask,
                            packed_seq_ids=doc) as hf:
            pass
    # The same metadata after derivation: the same computation, bit for bit.
    assert np.array_equal(hf.out, explicit.out)
    assert np.array_equal(hf.lse, explicit.lse)
    want = reference(q, k, v, doc, doc == 0, 0, 0.25, np.zeros_like(q))
    assert rel_err(hf.out, want[0]) < 1e-5


def test_token_types_become_vision_groups(address):
    q, k, v = qkv(2)
    types = np.zeros((B, S), np.int32)
    types[0, 4:10] = 1          # an image: group 0
    types[0, 15:18] = 2         # a video: group 1
    types[1, 0:7] = 1
    groups = np.full((B, S), -1, np.int32)
    groups[0, 4:10], groups[0, 15:18], groups[1, 0:7] = 0, 1, 0
    layer = Layer(sliding=True, window=6)
    with Client(address) as client:
        with client.forward(q, k, v, layer, vision_groups=groups) as explicit:
            pass
        with client.forward(q, k, v, layer, mm_token_type_ids=types) as hf:
            pass
        # The image blocks are bidirectional: a text-only call differs.
        with client.forward(q, k, v, layer) as text:
            pass
    assert np.array_equal(hf.out, explicit.out)
    assert not np.array_equal(hf.out, text.out)


def additive_mask(doc):
    """The [B, 1, S, S] additive mask Hugging Face builds for causal packed
    documents with padding: 0 attends, the dtype's lowest does not."""
    pos = np.arange(S)
    attend = (pos[None, :] <= pos[:, None])[None] & (doc[:, :, None] == doc[:, None, :])
    attend &= (doc[:, :, None] > 0)
    return np.where(attend, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]


def test_a_4d_mask_equal_to_the_layer_is_accepted_and_one_that_differs_is_refused(address):
    q, k, v = qkv(3)
    doc, _ = packed()
    mask = additive_mask(doc)
    with Client(address) as client:
        with client.forward(q, k, v, packed_seq_ids=doc) as want:
            pass
        with client.forward(q, k, v, attention_mask=mask, packed_seq_ids=doc) as got:
            pass
        assert np.array_equal(got.out, want.out)
        # Without packed_seq_ids the documents come from the mask itself.
        with client.forward(q, k, v, attention_mask=mask) as implied:
            pass
        assert np.array_equal(implied.out, want.out)
        mask[1, 0, 5, 2] = np.finfo(np.float32).min  # A hole the layer cannot express.
        with pytest.raises(RingattnError) as err:
            client.forward(q, k, v, attention_mask=mask, packed_seq_ids=doc)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "attention_mask" in err.value.details()
        assert client.status().open_sessions == 0


def test_hf_metadata_that_contradicts_the_explicit_one_is_refused(address):
    q, k, v = qkv(4)
    doc, attention_mask = packed()
    with Client(address) as client:
        with pytest.raises(RingattnError) as err:
            client.forward(q, k, v, attention_mask=attention_mask,
                           padding_mask=np.zeros((B, S), np.uint8))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "padding_mask" in err.value.details() and "attention_mask" in err.value.details()


@pytest.mark.parametrize("kwargs, match", [
    ({"attention_mask": np.ones((B, S + 1))}, r"attention_mask must be \[B, S\]"),
    ({"attention_mask": np.ones((B, 2, S, S))}, r"\[B, 1, S, S\]"),
    ({"packed_seq_ids": np.ones((B, S), np.float32)}, "packed_seq_ids.dtype float32"),
    ({"mm_token_type_ids": np.ones((S,), np.int32)}, r"mm_token_type_ids must be \[B, S\]"),
    ({"shard_layout": "ring"}, "shard_layout 'ring'"),
])
def test_bad_hf_metadata_fails_before_sending(kwargs, match):
    q, k, v = qkv(5)
    with Client("127.0.0.1:1", retries=0) as client:  # Nothing listens: nothing may be sent.
        with pytest.raises(RingattnError, match=match) as err:
            client.forward(q, k, v, **kwargs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_prepare_batch_pads_and_shards_as_the_ring_does(address):
    S0 = 13  # P = 16 on the cluster's ring of 2, L = 8.
    ids = np.arange(1, 1 + B * S0, dtype=np.int64).reshape(B, S0)
    labels = ids + 1000
    attention_mask = np.ones((B, S0), np.int64)
    attention_mask[1, 10:] = 0
    with Client(address) as client:
        got = client.prepare_batch(input_ids=ids, labels=labels, attention_mask=attention_mask,
                                   pad_token_id=7, include_shards=True)
    assert isinstance(got, PreparedBatch)
    assert (got.batch, got.seq_len, got.padded_len, got.cp, got.shard_len) == (B, S0, 16, 2, 8)
    assert np.array_equal(got["input_ids"][:, :S0], ids)
    assert np.all(got["input_ids"][:, S0:] == 7)
    assert np.array_equal(got["labels"][:, :S0], labels) and np.all(got["labels"][:, S0:] == -100)
    assert got["padding_mask"].dtype == np.bool_
    want_pad = np.ones((B, 16), bool)
    want_pad[0, :S0], want_pad[1, :10] = False, False
    assert np.array_equal(got["padding_mask"], want_pad)
    assert np.array_equal(got["doc_ids"], (~want_pad).astype(np.int32))
    assert np.all(got["vision_groups"] == -1)
    # Positions are injected 0..S-1 and continue through the padding.
    assert np.array_equal(got["position_ids"], np.tile(np.arange(16), (B, 1)))
    assert len(got.shards) == 2
    for name, whole in got.tensors.items():
        joined = np.concatenate([shard[name] for shard in got.shards], axis=1)
        assert np.array_equal(joined, whole), name


def test_prepare_batch_takes_embeds_rope_positions_and_another_cp(address):
    S0 = 5  # cp = 3: P = 6, L = 2.
    rng = np.random.default_rng(6)
    embeds = rng.standard_normal((B, S0, 4)).astype(np.float32)
    positions = np.stack([np.tile(np.arange(S0), (B, 1)) * (i + 1) for i in range(3)])
    loss_mask = np.ones((B, S0), bool)
    types = np.zeros((B, S0), np.int64)
    types[0, 1:3] = 1
    with Client(address) as client:
        got = client.prepare_batch(inputs_embeds=embeds, loss_mask=loss_mask,
                                   position_ids=positions, mm_token_type_ids=types, cp=3)
    assert (got.padded_len, got.cp, got.shard_len, got.shards) == (6, 3, 2, [])
    assert got["inputs_embeds"].shape == (B, 6, 4)
    assert np.array_equal(got["inputs_embeds"][:, :S0], embeds)
    assert np.all(got["inputs_embeds"][:, S0:] == 0)
    assert got["position_ids"].shape == (3, B, 6)
    assert np.array_equal(got["position_ids"][:, :, S0], positions[:, :, -1] + 1)
    assert np.array_equal(got["vision_groups"][0], [-1, 0, 0, -1, -1, -1])
    assert np.array_equal(got["loss_mask"][:, S0:], np.zeros((B, 1), bool))


def test_prepare_batch_errors(address):
    ids = np.ones((B, 8), np.int64)
    with Client(address) as client:
        with pytest.raises(RingattnError, match="exactly one of input_ids"):
            client.prepare_batch(labels=ids)
        with pytest.raises(RingattnError, match="labels or loss_mask"):
            client.prepare_batch(input_ids=ids)
        with pytest.raises(RingattnError, match=r"labels must be \[B, S\]"):
            client.prepare_batch(input_ids=ids, labels=ids[:, :4])
        with pytest.raises(RingattnError) as err:  # Refused by the service.
            client.prepare_batch(input_ids=ids, labels=ids, mm_token_type_ids=ids * 5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "mm_token_type_ids" in err.value.details()
