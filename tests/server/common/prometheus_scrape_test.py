"""A real Prometheus server scrapes a live local cluster (coordinator and two
workers on 127.0.0.1); after a forward and a backward, Prometheus' HTTP API
must show the series and values the job produced, and every metric that the
deploy/ dashboard and alert rules name must exist."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from ringattn import Client, Layer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "deploy"))
from metric_names import metric_names_in_deploy  # noqa: E402

BIN_DIR = os.environ.get("RINGATTN_BIN_DIR", os.path.join(REPO, "build", "release", "bin"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
POLL_SECONDS = 90  # Prometheus' first scrape lands seconds after start.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    proc = subprocess.Popen([os.path.join(BIN_DIR, "ringattn"), "serve", "--cp=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoints = {"workers": []}
    deadline = time.time() + 90
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        words = line.split()
        if line.startswith("metrics of coordinator at "):
            endpoints["coordinator_metrics"] = words[-1]
        elif line.startswith("metrics of worker "):
            endpoints["workers"].append(words[-1])
        elif line.startswith("coordinator at "):
            endpoints["address"] = words[2].rstrip(";")
            break
    assert "address" in endpoints, "the local cluster did not come up"
    assert len(endpoints["workers"]) == 2
    yield endpoints
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0


@pytest.fixture(scope="module")
def prometheus(cluster):
    work = tempfile.mkdtemp(prefix="ringattn_prometheus_")
    config = os.path.join(work, "prometheus.yml")
    # The job names of deploy/prometheus/prometheus.yml, with static targets.
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: ringattn-coordinator
    static_configs:
      - targets: ['{cluster["coordinator_metrics"]}']
  - job_name: ringattn-worker
    static_configs:
      - targets: {json.dumps(cluster["workers"])}
""")
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)


def api(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def query(base, promql):
    """Instant vector of `promql` as {frozenset(labels): value}."""
    data = api(base, "query", query=promql)
    return {frozenset(s["metric"].items()): float(s["value"][1]) for s in data["result"]}


def poll(base, promql, accept, what):
    """Polls (bounded) until accept(result) holds; returns the result."""
    deadline = time.time() + POLL_SECONDS
    last = None
    while time.time() < deadline:
        try:
            last = query(base, promql)
            if accept(last):
                return last
        except OSError:
            pass  # Prometheus still starting.
        time.sleep(0.5)
    pytest.fail(f"{what}: {promql} gave {last} after {POLL_SECONDS} s")


B, H, Hkv, S, D = 1, 4, 2, 256, 32  # The job's shape.


def run_job(address):
    """One forward and one backward through the Python client."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((B, H, S, D), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, S, D), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, S, D), dtype=np.float32)
    with Client(address) as c:
        fwd = c.forward(q, k, v, layer=Layer(causal=True))
        c.backward(fwd.handle, np.ones_like(q))
        c.release(fwd.handle)
    return (q.nbytes + k.nbytes + v.nbytes + q.nbytes,  # q, k, v in; dout in
            fwd.out.nbytes)


def test_prometheus_scrapes_the_job(cluster, prometheus):
    poll(prometheus, "up", lambda r: len(r) == 3 and all(v == 1 for v in r.values()),
         "every target up")
    bytes_in, out_bytes = run_job(cluster["address"])

    # Requests by method and code, on the coordinator.
    ok = poll(prometheus,
              'ringattn_requests_total{job="ringattn-coordinator",code="OK"}',
              lambda r: {dict(k)["method"] for k in r} >= {"Forward", "Backward", "Release"},
              "coordinator requests")
    for labels, value in ok.items():
        if dict(labels)["method"] in ("Forward", "Backward"):
            assert value == 1, labels
    # Every worker ran one forward and one backward ring call.
    poll(prometheus, 'ringattn_requests_total{job="ringattn-worker",code="OK",method="Forward"}',
         lambda r: len(r) == 2 and all(v == 1 for v in r.values()), "worker forward calls")
    # Bytes: the client's tensors in (exactly), the outputs and LSE out.
    api_in = poll(prometheus,
                  'ringattn_received_bytes_total{job="ringattn-coordinator",channel="api"}',
                  lambda r: sum(r.values()) >= bytes_in, "api bytes in")
    assert sum(api_in.values()) == bytes_in
    poll(prometheus, 'ringattn_sent_bytes_total{job="ringattn-coordinator",channel="api"}',
         lambda r: sum(r.values()) > out_bytes, "api bytes out")
    poll(prometheus, 'ringattn_sent_bytes_total{job="ringattn-worker",channel="ring"}',
         lambda r: len(r) == 2 and all(v > 0 for v in r.values()), "ring bytes")
    # A full causal layer runs on zigzag shards (the coordinator's choice).
    poll(prometheus, 'ringattn_layout_calls_total{job="ringattn-coordinator"}',
         lambda r: {dict(k)["layout"]: v for k, v in r.items()} == {"contiguous": 0,
                                                                   "zigzag": 1},
         "forwards by layout")
    # Latency histograms: one whole call each; per ring step, cp steps per
    # rank wait on the ring, and on zigzag shards every rank computes every
    # step (each holds an early and a late chunk).
    poll(prometheus, 'ringattn_call_duration_seconds_count{op="forward"}',
         lambda r: sum(r.values()) == 1, "forward latency histogram")
    poll(prometheus, 'ringattn_call_duration_seconds_count{op="backward"}',
         lambda r: sum(r.values()) == 1, "backward latency histogram")
    compute = poll(prometheus, 'ringattn_ring_step_compute_seconds_count{op="forward"}',
                   lambda r: len(r) == 2, "ring step compute")
    assert sorted(compute.values()) == [2, 2], compute
    poll(prometheus, 'ringattn_ring_step_comm_wait_seconds_count{op="forward"}',
         lambda r: len(r) == 2 and all(v == 2 for v in r.values()), "ring step wait")
    # Work of the computed steps: zigzag gives both ranks half of the
    # causal pairs, B H S(S+1)/4 each (rank 0 holds chunks 0 and 3 of S/4,
    # rank 1 chunks 1 and 2).
    pairs = poll(prometheus, 'ringattn_ring_pairs_computed_total{op="forward"}',
                 lambda r: len(r) == 2 and all(v > 0 for v in r.values()), "pairs computed")
    assert sorted(pairs.values()) == [H * S * (S + 1) // 4] * 2
    backward_pairs = poll(prometheus, 'ringattn_ring_pairs_computed_total{op="backward"}',
                          lambda r: len(r) == 2 and all(v > 0 for v in r.values()),
                          "backward pairs computed")
    assert sum(backward_pairs.values()) == H * S * (S + 1) // 2
    # Achieved FLOP/s and FLOPs: causal forward is 4 B H D S(S+1)/2.
    flops = poll(prometheus, 'ringattn_flops_total{op="forward"}',
                 lambda r: sum(r.values()) > 0, "flops")
    assert sum(flops.values()) == 4 * B * H * D * S * (S + 1) / 2
    poll(prometheus, "ringattn_achieved_flops_per_second", lambda r: len(r) == 2 and
         all(v > 0 for v in r.values()), "achieved FLOP/s")
    # State: released, so nothing held; one ring of two workers, all up.
    poll(prometheus, "ringattn_sessions_open", lambda r: len(r) == 3 and
         all(v == 0 for v in r.values()), "sessions open")
    poll(prometheus, "ringattn_memory_held_bytes", lambda r: len(r) == 3 and
         all(v == 0 for v in r.values()), "memory held")
    poll(prometheus, "ringattn_workers_up", lambda r: list(r.values()) == [2], "workers up")
    poll(prometheus, "ringattn_workers_registered", lambda r: list(r.values()) == [2],
         "workers registered")
    poll(prometheus, "ringattn_ring_generation", lambda r: len(r) == 3 and
         all(v == 1 for v in r.values()), "ring generation")
    poll(prometheus, "ringattn_ring_rank", lambda r: sorted(r.values()) == [0, 1], "ranks")


def test_control_traffic_is_counted_apart_from_api_calls(cluster, prometheus):
    """Heartbeats outnumber API calls by far: they have their own family, so
    request rates and error ratios over ringattn_requests_total are about
    attention calls only."""
    poll(prometheus, "up", lambda r: len(r) == 3 and all(v == 1 for v in r.values()),
         "every target up")
    # Registration, the rendezvous store and JoinRing: control.
    control = poll(prometheus, "ringattn_control_requests_total",
                   lambda r: {(dict(k)["job"], dict(k)["method"]) for k in r} >= {
                       ("ringattn-coordinator", "Register"), ("ringattn-worker", "JoinRing")},
                   "control-plane requests")
    methods = {dict(k)["method"] for k in control}
    assert methods <= {"Register", "StoreSet", "StoreGet", "JoinRing"}, methods
    run_job(cluster["address"])
    api = poll(prometheus, "ringattn_requests_total",
               lambda r: {dict(k)["method"] for k in r} >= {"Forward", "Backward", "Release"},
               "API requests")
    methods = {dict(k)["method"] for k in api}
    assert not methods & {"Register", "StoreSet", "StoreGet", "JoinRing"}, methods


def test_every_daemon_exports_process_metrics_and_its_role(cluster, prometheus):
    poll(prometheus, "up", lambda r: len(r) == 3 and all(v == 1 for v in r.values()),
         "every target up")
    now = time.time()
    for name, ok in [("process_cpu_seconds_total", lambda v: v > 0),
                     ("process_resident_memory_bytes", lambda v: v > 1 << 20),
                     ("process_virtual_memory_bytes", lambda v: v > 1 << 20),
                     ("process_open_fds", lambda v: 3 <= v < 100000),
                     ("process_max_fds", lambda v: v >= 64),
                     ("process_start_time_seconds", lambda v: now - 3600 < v <= now + 5)]:
        r = poll(prometheus, name, lambda r: len(r) == 3, name)
        for labels, value in r.items():
            assert ok(value), (name, dict(labels), value)
    info = poll(prometheus, "ringattn_build_info", lambda r: len(r) == 3, "build info")
    roles = {}
    for labels in info:
        labels = dict(labels)
        roles.setdefault(labels["job"], []).append(labels)
    (coordinator,) = roles["ringattn-coordinator"]
    assert coordinator["role"] == "coordinator"
    assert "backend" not in coordinator, coordinator  # It computes nothing.
    assert len(roles["ringattn-worker"]) == 2
    for w in roles["ringattn-worker"]:
        assert w["role"] == "worker" and w["backend"] == "cpu", w


def test_every_metric_the_dashboard_and_alerts_use_is_exported(cluster, prometheus):
    poll(prometheus, "up", lambda r: len(r) == 3 and all(v == 1 for v in r.values()),
         "every target up")
    wanted = metric_names_in_deploy(REPO)
    assert len(wanted) >= 10, wanted
    deadline = time.time() + POLL_SECONDS
    missing = None
    while time.time() < deadline:
        names = set(api(prometheus, "label/__name__/values"))
        # Histograms are stored as _bucket/_sum/_count series.
        have = names | {n[: -len(s)] for n in names
                        for s in ("_bucket", "_sum", "_count") if n.endswith(s)}
        missing = wanted - have
        if not missing:
            return
        time.sleep(0.5)
    pytest.fail(f"dashboard or alerts name metrics the service does not export: {missing}")
