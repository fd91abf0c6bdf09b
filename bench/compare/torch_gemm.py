#!/usr/bin/env python3
"""Peer comparison: PyTorch matmul TFLOP/s on the GEMM shapes of a GPT config.

Times torch.matmul of a [N, K] activation by a [K, M] weight for the five
linear-layer shapes of the model (qkv, attention projection, MLP up, MLP
down, tied LM head), N = batch x context, the way `nawal-bench matmul
--device cuda` does (random inputs, fp32 output for nawal; PyTorch keeps its
own output dtype: bf16 for bf16). Median of --repeats timed with CUDA
events, and the FLOP-weighted total: the line to compare with nawal-bench's
`matmul_gflops`.

    python3 bench/compare/torch_gemm.py --precision bf16 [--width 768 --vocab 50257 --tokens 8192]

Output: torch_gemm precision=bf16 NxKxM=8192x768x2304 tflops=...; torch_gemm precision=bf16 weighted_tflops=...
"""

import argparse
import statistics

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="bf16")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    dt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    C, N = a.width, a.tokens
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C), (C, a.vocab)]
    g = torch.Generator(device="cuda").manual_seed(0)
    tot_f = tot_t = 0.0
    for K, M in shapes:
        x = torch.rand(N, K, device="cuda", generator=g, dtype=torch.float32).to(dt) * 2 - 1
        w = (torch.rand(K, M, device="cuda", generator=g, dtype=torch.float32).to(dt) * 2 - 1) * 0.02
        for _ in range(3):
            torch.matmul(x, w)
        times = []
        for _ in range(a.repeats):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            torch.matmul(x, w)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e-3)
        t = statistics.median(times)
        f = 2.0 * N * K * M
        tot_f += f
        tot_t += t
        print(f"torch_gemm precision={a.precision} NxKxM={N}x{K}x{M} tflops={f / t * 1e-12:.1f}", flush=True)
    print(f"torch_gemm precision={a.precision} weighted_tflops={tot_f / tot_t * 1e-12:.1f}", flush=True)


if __name__ == "__main__":
    main()
