#!/usr/bin/env python3
"""sdpa_baseline.py — PyTorch's flash attention (SDPA, bf16) on the same work as drt's two
attention ops at the DRT training shapes: the denominator of issue 7's "≥ 60% of SDPA flash
attention's TFLOP/s on equal work". Run it on the GPU machine in the same call as
bench_cuda_attention (scripts/gpu-check.sh does), so that both figures come from one GPU.

    python3 bench/sdpa_baseline.py [reps]        (default 20)

FLOPs are counted as bench_cuda_attention counts them: 4·d per (query, key) pair forward, the
backward 2.5× the forward, so TFLOP/s figures of the two programs compare directly.

  window   the sliding window (513 keys per query, B 4, T 16,380, H 12, d 64) has no flash kernel
           in SDPA; equal work is the same number of (query, key) pairs as non-causal attention
           over blocks of 512 queries × 512 keys (B·T/512 blocks), which is what a windowed flash
           kernel does tile by tile. Causal flash attention at 16,384 is printed too (the
           performance-anchors figure: 423–452 forward, 357–425 backward).
  gca      GCA's work is Z·Kc independent (64 queries × 64 keys) attentions per head: one SDPA
           call over (Z·Kc, H, 64, 64), bf16. It leaves out GCA's gather, the fusion over Kc and
           the weight gradient, so it is the ceiling of a GCA built on flash attention.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_attention(q, k, v, causal, reps):
    """Mean forward and backward ms of flash SDPA over `reps` calls after warm-up."""
    grad = torch.randn_like(q)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(grad)
        start, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        forward_ms = backward_ms = 0.0
        for _ in range(reps):
            start.record()
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            middle.record()
            out.backward(grad)
            end.record()
            torch.cuda.synchronize()
            forward_ms += start.elapsed_time(middle) / reps
            backward_ms += middle.elapsed_time(end) / reps
    return forward_ms, backward_ms


def report(name, pairs, d, forward_ms, backward_ms):
    flops = 4.0 * d * pairs
    print(f"{name:<34} forward {forward_ms:8.3f} ms {flops / forward_ms / 1e9:6.1f} TFLOP/s   "
          f"backward {backward_ms:8.3f} ms {2.5 * flops / backward_ms / 1e9:6.1f} TFLOP/s")


def qkv(batch, heads, length, d, keys=None):
    keys = keys or length
    make = lambda n: torch.randn(batch, heads, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return make(length), make(keys), make(keys)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, flash SDPA in bf16, {reps} reps")
    B, T, H, d, W = 4, 16380, 12, 64, 512
    window_pairs = B * H * sum(min(t + 1, W + 1) for t in range(T))
    blocks = (B * T + 511) // 512
    f, b = time_attention(*qkv(blocks, H, 512, d), causal=False, reps=reps)
    report("window work: 512x512 blocks", blocks * H * 512 * 512, d, f, b)
    print(f"{'':<34} (drt's window op does {window_pairs / (blocks * H * 512 * 512):.3f}x these pairs)")
    f, b = time_attention(*qkv(B, H, 16384, d), causal=True, reps=reps)
    report("causal flash, 4 x 16384", B * H * 16384 * 16385 // 2, d, f, b)
    Z, Kc, M, N = 1036, 8, 64, 64
    f, b = time_attention(*qkv(Z * Kc, H, M, d, N), causal=False, reps=reps)
    report("gca work: (Z*Kc, H, 64, 64)", Z * Kc * H * M * N, d, f, b)


if __name__ == "__main__":
    main()
