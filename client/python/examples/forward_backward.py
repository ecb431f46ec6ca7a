"""Forward and backward of one causal layer through a running cluster.

    build/release/bin/ringattn serve &          # prints the coordinator address
    PYTHONPATH=client/python python3 client/python/examples/forward_backward.py 127.0.0.1:PORT
"""

import sys

import numpy as np

from ringattn import Client, Layer


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    rng = np.random.default_rng(0)
    B, H, Hkv, S, D = 1, 4, 2, 512, 64
    q = rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Hkv, S, D)).astype(np.float32)
    with Client(address) as client:
        print(client.status())
        fwd = client.forward(q, k, v, layer=Layer(sliding=True, window=128))
        print("out", fwd.out.shape, "lse", fwd.lse.shape, f"{fwd.metrics.seconds * 1e3:.1f} ms")
        bwd = client.backward(fwd.handle, np.ones_like(q))
        print("dq", bwd.dq.shape, "dk", bwd.dk.shape, f"{bwd.metrics.seconds * 1e3:.1f} ms")
        client.release(fwd.handle)


if __name__ == "__main__":
    main()
