#!/usr/bin/env python3
"""The CPU kernels against their PyTorch peers on the same problems.

Runs ringattn_attention_bench (D=128 only) as a subprocess and parses its
figure lines, then times PyTorch CPU scaled_dot_product_attention (forward
and backward) and FlexAttention (forward only) on the same shapes and masks:
B=1, H=16, Hkv=8, S=8192, D=128, causal, sliding W=512 and causal over packed
documents of 1024 tokens, fp32 and bf16. FLOPs count the pairs the mask
allows, as the C++ benchmark does (4*D per pair and head forward, 2.5x that
backward). Ends with `figure: <name> <value>` lines, ratios ringattn / peer.

A by-hand benchmark: its PyTorch lives in a venv of its own (never a
dependency of the build, the tests or CI):

    bench/kernels/setup_peers_venv.sh
    build/peers-venv/bin/python bench/kernels/peers.py [--bench PATH] [--seq_len N]
"""

import argparse
import os
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

B, H, HKV, D = 1, 16, 8, 128
WINDOW, DOC_LEN = 512, 1024
MASKS = ("causal", "sliding512", "docs1024")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def allowed(mask, q, k):
    """Whether query q attends key k (tensors of positions)."""
    ok = k <= q
    if mask == "sliding512":
        ok = ok & (q - k < WINDOW)
    elif mask == "docs1024":
        ok = ok & (q // DOC_LEN == k // DOC_LEN)
    return ok


def allowed_fraction(mask, s):
    q = torch.arange(s).unsqueeze(1)
    k = torch.arange(s).unsqueeze(0)
    return allowed(mask, q, k).double().mean().item()


def best_seconds(fn, reps):
    fn()  # Warm-up: first-call allocation and dispatch.
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sdpa_gflops(dtype, mask, s, reps):
    """PyTorch SDPA forward and backward GFLOP/s. K and V are expanded to
    the query heads beforehand (outside the timing), the way GQA reaches a
    kernel that has no GQA of its own."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, s, D, generator=g, dtype=dtype)
    k = torch.randn(B, HKV, s, D, generator=g, dtype=dtype).repeat_interleave(H // HKV, 1)
    v = torch.randn(B, HKV, s, D, generator=g, dtype=dtype).repeat_interleave(H // HKV, 1)
    dout = torch.randn(B, H, s, D, generator=g, dtype=dtype)
    kwargs = {"is_causal": True}
    if mask != "causal":
        pos = torch.arange(s)
        kwargs = {"attn_mask": allowed(mask, pos.unsqueeze(1), pos.unsqueeze(0))}
    flops = 4.0 * B * H * s * s * D * allowed_fraction(mask, s)

    with torch.no_grad():
        fwd = best_seconds(lambda: F.scaled_dot_product_attention(q, k, v, **kwargs), reps)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def backward():
        out = F.scaled_dot_product_attention(qg, kg, vg, **kwargs)
        t0 = time.perf_counter()
        out.backward(dout)
        return time.perf_counter() - t0

    backward()
    bwd = min(backward() for _ in range(reps))
    return flops / fwd * 1e-9, 2.5 * flops / bwd * 1e-9


def flex_gflops(dtype, mask, s, reps):
    """FlexAttention forward GFLOP/s (compiled, block mask from the same
    rule, GQA native)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(mask, q_idx, kv_idx)

    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, s, D, generator=g, dtype=dtype)
    k = torch.randn(B, HKV, s, D, generator=g, dtype=dtype)
    v = torch.randn(B, HKV, s, D, generator=g, dtype=dtype)
    block_mask = create_block_mask(mask_mod, None, None, s, s, device="cpu")
    flex = torch.compile(flex_attention)
    with torch.no_grad():
        seconds = best_seconds(
            lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True), reps)
    return 4.0 * B * H * s * s * D * allowed_fraction(mask, s) / seconds * 1e-9


def ringattn_figures(bench, s):
    cmd = [bench, f"--seq_len={s}", "--skip_dense", "--benchmark_filter=_d128_"]
    print("running:", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures = {}
    for name, value in re.findall(r"^figure: (\S+) (\S+)$", out, re.M):
        figures[name] = float(value)
    header = out.splitlines()[0] if out else ""
    return header, figures


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default=os.path.join(root, "build/release/bench/"
                                                        "ringattn_attention_bench"))
    parser.add_argument("--seq_len", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=2, help="timed calls per peer, best kept")
    parser.add_argument("--no_flex", action="store_true", help="leave FlexAttention out")
    args = parser.parse_args()

    header, ours = ringattn_figures(args.bench, args.seq_len)
    torch.set_num_threads(os.cpu_count())
    print(f"ringattn: {header}; torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    lines = []
    for dname, dtype in DTYPES.items():
        for mask in MASKS:
            key = f"{dname}_d{D}_{mask}"
            fwd, bwd = sdpa_gflops(dtype, mask, args.seq_len, args.reps)
            print(f"torch sdpa {key}: forward {fwd:.1f} GFLOP/s, backward {bwd:.1f} GFLOP/s",
                  flush=True)
            lines.append(f"figure: torch_sdpa_fwd_{key}_gflops {fwd:.1f}")
            lines.append(f"figure: torch_sdpa_bwd_{key}_gflops {bwd:.1f}")
            for pas, peer in (("fwd", fwd), ("bwd", bwd)):
                mine = ours.get(f"cpu_{pas}_{key}_gflops")
                if mine is not None:
                    lines.append(f"figure: cpu_{pas}_{key}_vs_torch_sdpa {mine / peer:.2f}")
            if args.no_flex:
                continue
            try:
                flex = flex_gflops(dtype, mask, args.seq_len, args.reps)
            except Exception as e:  # A torch without a CPU flex path: say so, go on.
                print(f"torch flex {key}: unavailable ({type(e).__name__}: {e})"[:300])
                continue
            print(f"torch flex {key}: forward {flex:.1f} GFLOP/s", flush=True)
            lines.append(f"figure: torch_flex_fwd_{key}_gflops {flex:.1f}")
            mine = ours.get(f"cpu_fwd_{key}_gflops")
            if mine is not None:
                lines.append(f"figure: cpu_fwd_{key}_vs_torch_flex {mine / flex:.2f}")
    print()
    for name, value in sorted(ours.items()):
        if name.endswith("_gflops") or name == "cpu_sgemm_peak_gflops" or "vs_sgemm" in name:
            print(f"figure: {name} {value:g}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
