#!/usr/bin/python3
"""Peer comparison: PyTorch CPU training throughput for nawal's benchmark GPT-2.

What it measures
    The same training step that `nawal-bench train` times, done by PyTorch on
    the CPU for the same GPT-2 config (default 4 layers, 4 heads, width 128,
    context 64, vocab 257, batch 12): zero_grad(set_to_none=True), forward on a
    fixed batch of random tokens with random targets, mean cross-entropy over
    all positions, backward, clip_grad_norm_(params, 1.0), AdamW step (lr 1e-4,
    betas (0.9, 0.99), eps 1e-8, weight decay 0.1 on tensors with dim >= 2 only,
    as nanoGPT groups them). The model is GPT-2 exactly: pre-LayerNorm blocks
    (eps 1e-5), tanh-approximated GELU, learned position embeddings, LM head
    tied to the token embedding, biases everywhere, no dropout.

    Two implementations (--impl, default both):
      plain  a compact hand-written nn.Module GPT-2 (nanoGPT style); attention
             uses F.scaled_dot_product_attention when torch has it, otherwise
             an explicit causal-masked softmax (torch 1.13 has no SDPA).
      hf     transformers.GPT2LMHeadModel built from the same config.

    For each thread count (--threads, default "1,2") it calls
    torch.set_num_threads(n), runs --warmup-steps untimed steps, then
    --repeats timed repeats of --steps steps each, and reports tokens/s per
    repeat and their median, which is the number to compare.

How to run it next to nawal (same machine, same thread count, back to back):
    build/nawal-bench train --threads 1      # prints: train_tokens_per_s <n>
    /usr/bin/python3 bench/compare/torch_cpu.py --threads 1
    build/nawal-bench train --threads 2
    /usr/bin/python3 bench/compare/torch_cpu.py --threads 2
    ratio = nawal train_tokens_per_s / torch_cpu tokens_per_s

    Any config flag given to one should be given to the other (--layers
    --heads --width --context --vocab --batch --steps --warmup-steps
    --repeats). Use Debian's system torch (/usr/bin/python3); no pip install.

Output lines meant to be grepped:
    torch_cpu impl=plain threads=1 tokens_per_s=12345 (median of 5 x 20 steps)
    torch_cpu best tokens_per_s=... impl=... threads=...

Model FLOP/s uses 6*N + 6*L*C*T FLOPs per token (forward + backward), where N
counts every parameter except the position embedding (the tied token
embedding / LM head once), L layers, C width, T context.
"""

import argparse
import inspect
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------
# plain: hand-written GPT-2
# --------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads, context):
        super().__init__()
        assert width % heads == 0, "width must be divisible by heads"
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.use_sdpa = hasattr(F, "scaled_dot_product_attention")
        if not self.use_sdpa:
            mask = torch.ones(context, context, dtype=torch.bool).tril()
            self.register_buffer("mask", mask.view(1, 1, context, context), persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(~self.mask[:, :, :t, :t], float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, width, heads, context):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = CausalSelfAttention(width, heads, context)
        self.ln2 = nn.LayerNorm(width, eps=1e-5)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        h = F.gelu(self.fc(self.ln2(x)), approximate="tanh")
        return x + self.fc_proj(h)


class PlainGPT2(nn.Module):
    def __init__(self, layers, heads, width, context, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, eps=1e-5)
        self.register_buffer("pos", torch.arange(context), persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("fc_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(self.pos[:t])
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)  # tied LM head, no bias (as GPT-2)


def build_plain(a):
    m = PlainGPT2(a.layers, a.heads, a.width, a.context, a.vocab)
    return m, (lambda idx: m(idx)), m.wpe.weight


# --------------------------------------------------------------------------
# hf: transformers.GPT2LMHeadModel
# --------------------------------------------------------------------------

def build_hf(a):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=a.vocab, n_positions=a.context, n_embd=a.width, n_layer=a.layers,
        n_head=a.heads, n_inner=None, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, use_cache=False,
    )
    m = GPT2LMHeadModel(cfg)
    assert m.lm_head.weight is m.transformer.wte.weight, "LM head is not tied"

    def fwd(idx):
        return m(input_ids=idx, use_cache=False, return_dict=True).logits

    return m, fwd, m.transformer.wpe.weight


BUILDERS = {"plain": build_plain, "hf": build_hf}


# --------------------------------------------------------------------------
# optimizer
# --------------------------------------------------------------------------

def make_adamw(model, mode):
    """AdamW with nanoGPT grouping; mode: auto|plain|foreach|fused. Returns (opt, label)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    sig = inspect.signature(torch.optim.AdamW).parameters
    tries = {"auto": ["fused", "foreach", "plain"], "fused": ["fused"],
             "foreach": ["foreach"], "plain": ["plain"]}[mode]
    for t in tries:
        if t != "plain" and t not in sig:
            continue
        extra = {} if t == "plain" else {t: True}
        if t == "plain" and "foreach" in sig:
            extra = {"foreach": False}
        try:
            opt = torch.optim.AdamW(groups, **kw, **extra)
            if t == "fused":  # CPU fused AdamW only exists in newer torch: probe one step
                for p in params:
                    p.grad = torch.zeros_like(p)
                opt.step()
                opt = torch.optim.AdamW(groups, **kw, **extra)  # fresh state
                for p in params:
                    p.grad = None
            return opt, t
        except (RuntimeError, TypeError, ValueError):
            continue
    raise SystemExit(f"AdamW mode '{mode}' is not supported by torch {torch.__version__}")


# --------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------

def run_impl(name, a, thread_counts):
    torch.manual_seed(1234)
    model, fwd, wpe = BUILDERS[name](a)
    model.train()
    params = list(model.parameters())  # deduplicated: tied wte appears once
    n_all = sum(p.numel() for p in params)
    n_flop = n_all - wpe.numel()
    flops_per_token = 6 * n_flop + 6 * a.layers * a.width * a.context
    opt, opt_label = make_adamw(model, a.adamw)

    g = torch.Generator().manual_seed(42)
    idx = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
    tgt = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
    tokens_per_step = a.batch * a.context

    print(f"[{name}] {n_all} parameters ({n_flop} without position embedding), "
          f"{flops_per_token / 1e6:.2f} MFLOP/token, AdamW={opt_label}")

    def step():
        opt.zero_grad(set_to_none=True)
        logits = fwd(idx)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    results = []
    for n in thread_counts:
        torch.set_num_threads(n)
        loss = None
        for _ in range(a.warmup_steps):
            loss = step()
        per_rep = []
        for r in range(a.repeats):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            dt = time.perf_counter() - t0
            tps = a.steps * tokens_per_step / dt
            per_rep.append(tps)
            print(f"  [{name} threads={n}] repeat {r + 1}: {tps:.0f} tokens/s "
                  f"({dt / a.steps * 1e3:.2f} ms/step)")
        med = statistics.median(per_rep)
        lossv = float(loss.detach()) if loss is not None else float("nan")
        print(f"  [{name} threads={n}] model FLOP/s: {med * flops_per_token / 1e9:.2f} GFLOP/s "
              f"(last loss {lossv:.4f}, torch.get_num_threads()={torch.get_num_threads()})")
        print(f"torch_cpu impl={name} threads={n} tokens_per_s={med:.0f} "
              f"(median of {a.repeats} x {a.steps} steps)")
        sys.stdout.flush()
        results.append((med, name, n))
    return results


def parse_threads(s):
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --threads '{s}'")
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("--threads needs positive integers, e.g. 1,2")
    return out


def loaded_blas_libs():
    """Resolved paths of BLAS/LAPACK/oneDNN/OpenMP libraries mapped into this process."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path).lower()
                if any(k in base for k in ("blas", "lapack", "mkl", "dnnl", "gomp", "iomp", "blis")):
                    real = os.path.realpath(path)
                    if real not in found:
                        found.append(real)
    except OSError:
        pass
    return found


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU GPT-2 training throughput (peer of nawal-bench train)")
    ap.add_argument("--impl", choices=["plain", "hf", "both"], default="both")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=257)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--threads", type=parse_threads, default=[1, 2], help="comma list, e.g. 1,2")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--adamw", choices=["auto", "plain", "foreach", "fused"], default="auto",
                    help="AdamW implementation; auto = fused if this torch supports it on CPU, else foreach")
    a = ap.parse_args()
    if a.width % a.heads:
        ap.error("--width must be divisible by --heads")
    if min(a.layers, a.heads, a.width, a.context, a.batch, a.steps, a.repeats) < 1 or a.vocab < 2 \
            or a.warmup_steps < 0:
        ap.error("sizes must be positive")

    print(f"torch {torch.__version__} (python {sys.version.split()[0]}, {sys.executable})")
    info = torch.__config__.parallel_info().strip().splitlines()
    for line in info[:8]:
        print(f"  {line}")
    blas = [l.strip() for l in torch.__config__.show().splitlines() if "BLAS" in l or "LAPACK" in l]
    for line in blas[:3]:
        print(f"  config: {line}")
    libs = loaded_blas_libs()
    print(f"  BLAS libraries loaded: {', '.join(libs) if libs else 'none found in /proc/self/maps'}")
    if any("/blas/" in l or "netlib" in l for l in libs):
        print("  WARNING: torch's fp32 matmuls go through the reference (netlib) BLAS here, which is\n"
              "  unoptimized; an optimized libblas.so.3 (e.g. apt install libopenblas0-pthread, which\n"
              "  switches the alternative) makes this torch much faster. Report which one was used.")
    print(f"  mkldnn available: {torch.backends.mkldnn.is_available()}, "
          f"mkl available: {torch.backends.mkl.is_available()}, "
          f"sdpa: {hasattr(F, 'scaled_dot_product_attention')}")
    print(f"model: {a.layers} layers, {a.heads} heads, width {a.width}, context {a.context}, "
          f"vocab {a.vocab}; batch {a.batch}; threads {a.threads}; "
          f"{a.warmup_steps} warmup, {a.repeats} x {a.steps} timed steps")

    impls = ["plain", "hf"] if a.impl == "both" else [a.impl]
    results = []
    for name in impls:
        results += run_impl(name, a, a.threads)
    best = max(results)
    print(f"torch_cpu best tokens_per_s={best[0]:.0f} impl={best[1]} threads={best[2]}")


if __name__ == "__main__":
    main()
