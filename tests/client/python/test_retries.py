"""Retries, errors and the non-blocking forms against a scripted in-process
gRPC server on 127.0.0.1 (a real server and channel; the service answers as
each test says)."""

import collections
import concurrent.futures
import threading

import grpc
import numpy as np
import pytest

from ringattn import Client, RingattnError
from ringattn._proto.attention.v1 import attention_service_pb2 as pb
from ringattn._proto.attention.v1 import attention_service_pb2_grpc as pb_grpc
from ringattn.wire import chunks

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Scripted(pb_grpc.AttentionServiceServicer):
    """Counts calls; fails the first `failures` of each with `code`."""

    def __init__(self):
        self.calls = collections.Counter()
        self.failures = 0
        self.code = UNAVAILABLE
        self.release_retry_code = None  # What a Release after a failed one answers.
        self.forward_fails_after = "header"  # or "everything"
        self.entered = threading.Event()
        self.gate = None  # When set, Forward waits for it before answering.

    def _fail(self, name, context):
        self.calls[name] += 1
        if self.calls[name] <= self.failures:
            context.abort(self.code, f"{name} try {self.calls[name]} fails")

    def ClusterStatus(self, request, context):
        self._fail("status", context)
        return pb.ClusterStatusResponse(cp=2, ring_ready=True)

    def Release(self, request, context):
        self._fail("release", context)
        if self.release_retry_code is not None:
            context.abort(self.release_retry_code, "unknown handle")
        return pb.ReleaseResponse()

    def Forward(self, request_iterator, context):
        self.calls["forward"] += 1
        self.entered.set()
        header = next(request_iterator).header
        failing = self.calls["forward"] <= self.failures
        if failing and self.forward_fails_after == "header":
            context.abort(UNAVAILABLE, "worker gone")
        for _ in request_iterator:
            pass
        if failing:
            context.abort(UNAVAILABLE, "worker gone after the inputs")
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        B, H, S, D = header.batch, header.heads, header.seq_len, header.head_dim
        yield pb.ForwardResponse(session=pb.SessionInfo(handle=f"h{self.calls['forward']}",
                                                        padded_len=S, cp=2))
        out = np.zeros((B, H, S, D), np.float32)
        lse = np.zeros((B, H, S), np.float32)
        for name, array in (("out", out), ("lse", lse)):
            for chunk in chunks(name, "FP32", array):
                yield pb.ForwardResponse(chunk=chunk)
        yield pb.ForwardResponse(metrics=pb.CallMetrics(seconds=0.001))


@pytest.fixture
def scripted():
    service = Scripted()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_receive_message_length", 8 << 20)])
    pb_grpc.add_AttentionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    if service.gate is not None:
        service.gate.set()
    server.stop(grace=None)


def qkv(heads=2, seq=16, dim=8):
    q = np.zeros((1, heads, seq, dim), np.float32)
    kv = np.zeros((1, 1, seq, dim), np.float32)
    return q, kv, kv


def test_status_is_retried_on_unavailable(scripted):
    service, addr = scripted
    service.failures = 2
    with Client(addr, retries=3) as client:
        assert client.status().ring_ready
    assert service.calls["status"] == 3


def test_retries_run_out(scripted):
    service, addr = scripted
    service.failures = 10
    with Client(addr, retries=2) as client:
        with pytest.raises(RingattnError) as err:
            client.status()
    assert err.value.code() == UNAVAILABLE and "status try 3 fails" in err.value.details()
    assert service.calls["status"] == 3


def test_other_codes_are_not_retried(scripted):
    service, addr = scripted
    service.failures, service.code = 1, grpc.StatusCode.INTERNAL
    with Client(addr, retries=3) as client:
        with pytest.raises(RingattnError) as err:
            client.status()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "status try 1 fails"
    assert service.calls["status"] == 1


def test_release_retried_and_not_found_after_a_lost_answer_is_success(scripted):
    service, addr = scripted
    service.failures, service.release_retry_code = 1, grpc.StatusCode.NOT_FOUND
    with Client(addr) as client:
        client.release("h")
    assert service.calls["release"] == 2


def test_release_of_an_unknown_handle_is_not_found(scripted):
    service, addr = scripted
    service.release_retry_code = grpc.StatusCode.NOT_FOUND
    with Client(addr) as client:
        with pytest.raises(RingattnError) as err:
            client.release("h")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_forward_cut_before_its_last_chunk_is_retried(scripted):
    service, addr = scripted
    service.failures, service.forward_fails_after = 1, "header"
    # 32 MiB of inputs: more than a stream buffers before the server reads,
    # so the first try cannot have let go of its last chunk.
    q, k, v = qkv(heads=4, seq=1024, dim=1024)
    k = v = np.zeros((1, 2, 1024, 1024), np.float32)
    with Client(addr) as client:
        fwd = client.forward(q, k, v)
    assert fwd.handle == "h2" and service.calls["forward"] == 2


def test_forward_that_sent_everything_is_not_retried(scripted):
    service, addr = scripted
    service.failures, service.forward_fails_after = 1, "everything"
    with Client(addr) as client:
        with pytest.raises(RingattnError) as err:
            client.forward(*qkv())
    assert err.value.code() == UNAVAILABLE and "after the inputs" in err.value.details()
    assert service.calls["forward"] == 1


def test_forward_async_does_not_block(scripted):
    service, addr = scripted
    service.gate = threading.Event()
    with Client(addr) as client:
        future = client.forward_async(*qkv())
        assert service.entered.wait(timeout=30)
        assert not future.done()  # The server holds the answer back.
        service.gate.set()
        assert future.result(timeout=30).handle == "h1"


def test_unreachable_coordinator_is_unavailable():
    with Client("127.0.0.1:1", retries=1) as client:
        with pytest.raises(RingattnError) as err:
            client.status(timeout=10)
    assert err.value.code() == UNAVAILABLE
