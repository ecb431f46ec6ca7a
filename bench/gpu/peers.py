#!/usr/bin/env python3
"""Peers of the CUDA kernels on the same GPU and the same shapes.

Runs PyTorch SDPA (flash backend, causal; D <= 256 only, as the flash
backend allows) and FlexAttention (torch.nn.attention.flex_attention with a
mask_mod implementing the SPEC §2 Gemma 4 mask) on the cases of
bench/gpu/gpu_attention_bench.cc, prints their TFLOP/s, and the ratios
ours / peer when our figures are available (from --ours FILE holding the
bench's output, or by running --bench BINARY, by default
build/release/bin/ringattn_gpu_attention_bench).

FLOPs count attended (query, key) pairs exactly as the C++ bench does:
forward 4 * D per pair and head, backward 2.5x forward.

Without torch, or without a GPU, it says so and exits 0.

    python3 bench/gpu/peers.py [--ours out.txt | --bench PATH] [--reps 10]
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BENCH = os.path.join(REPO, "build", "release", "bin", "ringattn_gpu_attention_bench")

# Mirrors Cases() of gpu_attention_bench.cc: name, B, H, S, D, kind, window, scale, gemma layout.
CASES = [
    ("bf16_d128_causal_s8192", 1, 16, 8192, 128, "full", 0, 128 ** -0.5, False),
    ("bf16_d128_causal_s16384", 1, 16, 16384, 128, "full", 0, 128 ** -0.5, False),
    ("bf16_d256_gemma4_sliding_w512_s8192", 1, 16, 8192, 256, "sliding", 512, 1.0, True),
    ("bf16_d512_gemma4_full_s8192", 1, 16, 8192, 512, "full", 0, 1.0, True),
]

FIGURE = re.compile(r"^figure: (\S+) (\S+)$")


def figure(name, value):
    print(f"figure: {name} {value:.3f}", flush=True)


def parse_figures(text):
    out = {}
    for line in text.splitlines():
        m = FIGURE.match(line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def our_figures(args):
    if args.ours:
        with open(args.ours) as f:
            return parse_figures(f.read())
    if os.path.exists(args.bench):
        run = subprocess.run([args.bench, f"--reps={args.reps}"], capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        if run.returncode != 0:
            sys.stderr.write(run.stderr)
        return parse_figures(run.stdout)
    print(f"our bench not found at {args.bench}: printing peer figures only")
    return {}


def layout(torch, s, gemma, device):
    """doc, vision, padding of reference::GemmaLikeLayout(s) or one document."""
    doc = torch.zeros(s, dtype=torch.int32, device=device)
    vision = torch.full((s,), -1, dtype=torch.int32, device=device)
    if not gemma:
        doc[:] = 1
    else:
        doc1 = s * 45 // 100
        doc2 = s * 40 // 100
        doc[:doc1] = 1
        doc[doc1:doc1 + doc2] = 2
        vision[doc1 // 3:doc1 * 2 // 3] = 0
    padding = doc <= 0
    return doc, vision, padding


def make_mask_mod(doc, vision, padding, kind, window):
    """SPEC §2: causal, window (strict), vision OR on sliding layers,
    documents and padding. Vision-bidirectional is on for sliding layers."""
    sliding = kind == "sliding"

    def mask_mod(b, h, q, k):
        allowed = k <= q
        if sliding:
            allowed = allowed & (q - k < window)
            allowed = allowed | ((vision[q] >= 0) & (vision[q] == vision[k]))
        allowed = allowed & (doc[q] == doc[k]) & (doc[q] > 0)
        return allowed & ~padding[k] & ~padding[q]

    return mask_mod


def attended_pairs(torch, mask_mod, s, device):
    total = 0
    k = torch.arange(s, device=device)
    for q0 in range(0, s, 1024):
        q = torch.arange(q0, min(q0 + 1024, s), device=device)[:, None]
        total += int(mask_mod(0, 0, q, k[None, :]).sum().item())
    return total


def time_seconds(torch, fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1e3 / reps


def fwd_bwd_seconds(torch, attend, q, k, v, reps):
    """Forward time, and backward time as (forward + backward) - forward."""
    dout = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            attend(q, k, v)

    def fwd_bwd():
        out = attend(q, k, v)
        out.backward(dout)

    t_fwd = time_seconds(torch, fwd, reps)
    t_both = time_seconds(torch, fwd_bwd, reps)
    return t_fwd, max(t_both - t_fwd, 1e-9)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", help="file with the output of ringattn_gpu_attention_bench")
    parser.add_argument("--bench", default=DEFAULT_BENCH, help="our bench binary to run")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print("torch is not installed: peers skipped")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    ours = our_figures(args)

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        sdpa_kernel = None
        print("torch.nn.attention.sdpa_kernel is not available in this torch: SDPA skipped")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except ImportError:
        flex = None
        print("torch.nn.attention.flex_attention is not available in this torch: flex skipped")

    device = "cuda"
    for name, b, h, s, d, kind, window, scale, gemma in CASES:
        doc, vision, padding = layout(torch, s, gemma, device)
        mask_mod = make_mask_mod(doc, vision, padding, kind, window)
        pairs = attended_pairs(torch, mask_mod, s, device)
        fwd_flops = 4.0 * d * pairs * h * b
        bwd_flops = 2.5 * fwd_flops
        make = lambda: torch.randn(b, h, s, d, device=device, dtype=torch.bfloat16,
                                   requires_grad=True)
        q, k, v = make(), make(), make()
        peers = {}
        if sdpa_kernel is not None and not gemma and d <= 256:
            def sdpa(q, k, v):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=True, scale=scale)
            peers["sdpa_flash"] = fwd_bwd_seconds(torch, sdpa, q, k, v, args.reps)
        if flex is not None:
            block_mask = create_block_mask(mask_mod, None, None, s, s, device=device)

            def flex_attend(q, k, v):
                return flex(q, k, v, block_mask=block_mask, scale=scale)
            try:
                peers["flex"] = fwd_bwd_seconds(torch, flex_attend, q, k, v, args.reps)
            except Exception as e:  # e.g. D = 512 beyond what flex's kernels support
                print(f"flex on {name}: {type(e).__name__}: {e}".splitlines()[0])
        for peer, (t_fwd, t_bwd) in peers.items():
            fwd_tflops = fwd_flops / t_fwd / 1e12
            bwd_tflops = bwd_flops / t_bwd / 1e12
            figure(f"{peer}_fwd_{name}_tflops", fwd_tflops)
            figure(f"{peer}_bwd_{name}_tflops", bwd_tflops)
            for direction, peer_tflops in (("fwd", fwd_tflops), ("bwd", bwd_tflops)):
                mine = ours.get(f"cuda_{direction}_{name}_tflops")
                if mine is not None:
                    figure(f"cuda_{direction}_{name}_vs_{peer}", mine / peer_tflops)
        del q, k, v
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
