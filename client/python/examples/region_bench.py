"""Forward and backward through the Python client, streamed and through a
shared-memory region, in one run: bytes per second each way and their ratio.

    scripts/run_main.sh serve                       # prints the coordinator address
    python3 client/python/examples/region_bench.py 127.0.0.1:PORT [S] [repeat]

The layer is a sliding window of 16 (little compute), so the figures are
mostly moving bytes: Q, K, V, dO in and O, LSE, dQ, dK, dV out, over the
best of `repeat` steps. The service must run on this host for the region
path. Both paths give the same results, bit for bit (checked).
"""

import sys
import time

import numpy as np

from ringattn import Client, Layer, SharedRegion


def main() -> None:
    address = sys.argv[1]
    S = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    B, H, Hkv, D = 1, 8, 8, 128
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.uniform(-1, 1, (B, H, S, D)).astype(np.float32) for _ in range(4))
    layer = Layer(sliding=True, window=16)
    moved = 9 * q.nbytes + B * H * S * 4  # 4 tensors in, O, dQ, dK, dV and LSE out.

    def step(inputs, outputs=None):
        outputs = outputs or {}
        t0 = time.perf_counter()
        fwd = client.forward(*inputs[:3], layer, out=outputs.get("out"), lse=outputs.get("lse"))
        bwd = fwd.backward(inputs[3], dq=outputs.get("dq"), dk=outputs.get("dk"),
                           dv=outputs.get("dv"))
        seconds = time.perf_counter() - t0
        fwd.release()
        return seconds, (fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv)

    with Client(address) as client, SharedRegion(10 * q.nbytes + (1 << 20)) as region:
        streamed = min(step((q, k, v, dout))[0] for _ in range(repeat))
        _, want = step((q, k, v, dout))
        client.register_region(region)
        shared_in = []
        for a in (q, k, v, dout):
            view = region.ndarray(a.shape, a.dtype)
            view[...] = a
            shared_in.append(view)
        outputs = {name: region.ndarray(shape, np.float32) for name, shape in
                   (("out", q.shape), ("lse", q.shape[:3]), ("dq", q.shape), ("dk", k.shape),
                    ("dv", v.shape))}
        shared = min(step(shared_in, outputs)[0] for _ in range(repeat))
        _, got = step(shared_in, outputs)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), "results differ"
    mib = moved / 2**20
    print(f"B={B} H={H} S={S} D={D} fp32, sliding W=16: {mib:.0f} MiB per step")
    print(f"streamed: {streamed:.3f} s, {mib / streamed:.0f} MiB/s")
    print(f"region:   {shared:.3f} s, {mib / shared:.0f} MiB/s")
    print(f"figure: python_region_step_speedup_vs_streamed {streamed / shared:.2f}")


if __name__ == "__main__":
    main()
