#!/usr/bin/env python3
"""Peer comparison: PyTorch GPU training throughput for nawal's benchmark GPT-2.

What it measures
    The step `nawal-bench train --device cuda` times, done by PyTorch on the
    same GPU: zero_grad, forward on a fixed batch of random tokens with random
    targets, mean cross-entropy, backward, clip_grad_norm_(1.0), AdamW (fused
    when available; nanoGPT decay grouping, lr 1e-4, betas (0.9, 0.99)). The
    model is the hand-written GPT-2 of torch_cpu.py (imported, not copied):
    pre-LN, tanh-GELU, tied LM head, F.scaled_dot_product_attention (flash
    attention on Hopper when the precision allows).

    --precision fp32: plain fp32 (TF32 off); tf32: TF32 matmuls; bf16:
    torch.autocast(bfloat16) around forward and loss (bf16 activations: more
    aggressive than nawal's bf16, which rounds only the matmul operands).
    --compile off|on|both: eager and/or torch.compile(model).

    --preset tiny (4x4x128, ctx 64, vocab 257, batch 12) or gpt2-small
    (12x12x768, ctx 1024, vocab 50257, batch 8), as nawal-bench's presets.

Run it on the same GPU in the same session as nawal-bench (tests/gpu/run.sh
does), then ratio = nawal train_tokens_per_s / torch tokens_per_s.

Output lines meant to be grepped:
    torch_gpu preset=tiny precision=bf16 compile=off tokens_per_s=123456 (median of R x S steps)
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu import PlainGPT2, make_adamw  # noqa: E402

PRESETS = {
    "tiny": dict(layers=4, heads=4, width=128, context=64, vocab=257, batch=12, steps=20, warmup=5),
    "gpt2-small": dict(layers=12, heads=12, width=768, context=1024, vocab=50257, batch=8, steps=5, warmup=3),
}


def run(a, compiled):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = PlainGPT2(a.layers, a.heads, a.width, a.context, a.vocab).to(dev)
    opt, opt_label = make_adamw(model, "auto")
    fwd = torch.compile(model) if compiled else model
    g = torch.Generator(device="cpu").manual_seed(42)
    idx = torch.randint(0, a.vocab, (a.batch, a.context), generator=g).to(dev)
    tgt = torch.randint(0, a.vocab, (a.batch, a.context), generator=g).to(dev)
    params = [p for p in model.parameters()]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = fwd(idx)
            loss = F.cross_entropy(logits.float().view(-1, a.vocab), tgt.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    rates = []
    for _ in range(a.repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
        rates.append(a.steps * a.batch * a.context / (time.perf_counter() - t0))
    med = statistics.median(rates)
    print(f"torch_gpu preset={a.preset} precision={a.precision} compile={'on' if compiled else 'off'} "
          f"tokens_per_s={med:.0f} (median of {a.repeats} x {a.steps} steps; warmup {warm:.1f} s; "
          f"AdamW={opt_label}; repeats {' '.join(f'{r:.0f}' for r in rates)})", flush=True)
    del model, opt, fwd
    torch.cuda.empty_cache()
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="bf16")
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    for k in ["layers", "heads", "width", "context", "vocab", "batch", "steps", "warmup"]:
        ap.add_argument("--" + k, type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if not torch.cuda.is_available():
        raise SystemExit("torch_gpu: no CUDA device visible to PyTorch")
    tf32 = a.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: {a.layers}x{a.heads}x{a.width}, "
          f"ctx {a.context}, vocab {a.vocab}, batch {a.batch}", flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    for c in modes:
        run(a, c)


if __name__ == "__main__":
    main()
