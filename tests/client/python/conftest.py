"""One local cluster (coordinator + 2 CPU workers) shared by the test modules."""

import os
import signal
import subprocess
import time

import pytest

BIN_DIR = os.environ.get("RINGATTN_BIN_DIR", "build/release/bin")


def start_cluster(flags=()):
    """Starts `ringattn serve --cp=2`; returns (process, coordinator address)."""
    proc = subprocess.Popen([os.path.join(BIN_DIR, "ringattn"), "serve", "--cp=2", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("coordinator at "):
            return proc, line.split()[2].rstrip(";")
    proc.kill()
    proc.wait()
    raise AssertionError("the local cluster did not come up")


def stop_cluster(proc):
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0


@pytest.fixture(scope="session")
def address():
    proc, addr = start_cluster()
    yield addr
    stop_cluster(proc)


def wait_for_sessions(client, want, seconds=10.0):
    """Polls ClusterStatus until open_sessions == want (releases from
    finalizers run on a background thread); returns the last count."""
    deadline = time.time() + seconds
    while True:
        have = client.status().open_sessions
        if have == want or time.time() > deadline:
            return have
        time.sleep(0.02)
