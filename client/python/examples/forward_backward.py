"""Forward and backward of one causal layer through a running cluster (numpy).

    pip install ./client/python
    scripts/run_main.sh serve                       # prints the coordinator address
    python3 client/python/examples/forward_backward.py 127.0.0.1:PORT
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
        with client.forward(q, k, v, layer=Layer(sliding=True, window=128)) as fwd:
            print("out", fwd.out.shape, "lse", fwd.lse.shape,
                  f"{fwd.metrics.seconds * 1e3:.1f} ms")
            bwd = fwd.backward(np.ones_like(q))
            print("dq", bwd.dq.shape, "dk", bwd.dk.shape, f"{bwd.metrics.seconds * 1e3:.1f} ms")
        # Leaving the block released the session.


if __name__ == "__main__":
    main()
