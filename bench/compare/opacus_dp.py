#!/usr/bin/env python3
"""Peer comparison: Opacus DP-SGD training throughput for nawal's benchmark GPT-2.

What it measures
    The DP-SGD step that `nawal-bench train --dp` times, done by Opacus on the
    CPU or a CUDA GPU for the same GPT-2 and the same fixed batch: zero_grad,
    forward on a fixed batch of random tokens with random targets, cross-entropy
    (one example = one sequence; its loss is the mean over its positions, the
    batch loss the mean over sequences), backward with per-example gradients,
    flat per-example clipping to max_grad_norm 1.0, Gaussian noise with noise
    multiplier 1.0 on the clipped sum, division by the batch size, then AdamW
    (lr 1e-4, betas (0.9, 0.99), eps 1e-8, weight decay 0.1 on tensors with
    dim >= 2, as torch_cpu.py's make_adamw groups them). No Poisson sampling:
    every step sees the same batch of --batch sequences (Opacus is set up
    through PrivacyEngine.make_private(poisson_sampling=False) with a
    one-batch DataLoader, so its expected batch size is exactly --batch; the
    timed loop feeds the fixed tensors directly). Opacus's RDP accountant hook
    runs every step, as in any Opacus training loop; secure_mode is off
    (torch's default generator draws the noise).

    The model is torch_cpu.py's PlainGPT2 (imported, not copied). Opacus only
    sees parameters used through modules, so OpacusGPT2 below subclasses it
    with two changes that leave the function unchanged (checked at start-up:
    its logits equal PlainGPT2.forward's):
      - the LM head is an nn.Linear module (no bias) instead of
        F.linear(x, wte.weight) -- with a tied head its weight IS wte.weight,
        the same Parameter, so the parameter count is unchanged;
      - the position ids get the batch dimension ((B, T) instead of (T,)),
        which Opacus's Embedding per-sample-gradient code expects.

    --mode hooks: Opacus's default grad_sample_mode="hooks": per-example
        gradients are materialised for every parameter (einsum per layer),
        their norms taken, then clipped and summed. The tied wte/LM-head
        weight is handled exactly: Opacus adds the per-example gradients of
        the two uses (Embedding and Linear hooks on one Parameter) before the
        norm, so the cross term is included (--check verifies this).
    --mode ghost: Opacus's ghost clipping / fast gradient clipping
        (grad_sample_mode="ghost", Opacus >= 1.5, which needs torch >= 2):
        per-example norms of Linear and Embedding layers without materialising
        gradients (others, e.g. LayerNorm, are materialised), then a SECOND
        backward pass of the clip-weighted loss. Opacus refuses tied
        parameters in this mode ("Parameter tying is not supported with Ghost
        Clipping"), so with --head auto (default) ghost mode runs on an UNTIED
        head: a separate lm_head weight initialised as a copy of wte, i.e.
        vocab*width more parameters (+32,896 on the tiny config, +38.6M on
        GPT-2 small) -- it is a different (larger) model than nawal's, say so
        with any ghost figure. With an Opacus too old for ghost clipping the
        mode is skipped with a line saying so (`opacus mode=ghost ... skipped`).
    --mode both: hooks, then ghost.
    --head auto|tied|untied: auto = tied for hooks; for ghost, tied is tried
        first and, when Opacus refuses it, rebuilt untied (the refusal is
        printed).
    --check: before timing, compare the per-example gradient norms Opacus
        computes (hooks: from p.grad_sample; ghost: per_sample_gradient_norms
        where this Opacus exposes it) with B separate batch-of-one backward
        passes on an unwrapped copy of the model; prints the max relative
        error.

    For each thread count (--threads, default "1,2"; CPU only) it calls
    torch.set_num_threads(n), runs --warmup-steps untimed steps, then
    --repeats timed repeats of --steps steps, and reports tokens/s per repeat
    and their median, the number to compare. On CUDA the timed region is
    bracketed by torch.cuda.synchronize().

    Config: default 4 layers, 4 heads, width 128, context 64, vocab 257,
    batch 12 (nawal-bench's defaults); --preset gpt2-small (12x12x768, ctx
    1024, vocab 50257, batch 8) as torch_gpu.py; --layers etc. override.
    --precision fp32 (default) | tf32 (CUDA: TF32 matmuls) | bf16
    (torch.autocast(bfloat16) around forward and loss, as torch_gpu.py; Opacus
    then computes the per-example gradients of layers with bf16 outputs in
    bf16, and hands fp32 gradients to AdamW). --check always runs in fp32.

Versions: Debian 12's python3-torch is 1.13.1; the newest Opacus that
accepts it is 1.4.0 (1.4.1+ require torch >= 2.0), which has hooks mode
only. Install it for the system python (its other needs from Debian):
    apt-get install -y python3-torch libopenblas0-pthread python3-scipy
    /usr/bin/python3 -m pip install --user --break-system-packages --no-deps \\
        opacus==1.4.0 opt-einsum

How to run it next to nawal on the CPU (same machine, back to back):
    build/nawal-bench train --device cpu --dp --threads 1   # dp_train_tokens_per_s <n>
    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/compare/opacus_dp.py --device cpu --threads 1
    (and --threads 2 for both), or bench/compare/dp_vs_opacus.sh, which does
    both thread counts and prints the ratios
    ratio = nawal dp_train_tokens_per_s / opacus tokens_per_s.
    Any config flag given to one should be given to the other (--layers
    --heads --width --context --vocab --batch --steps --warmup-steps
    --repeats).

On a GPU machine (tests/gpu/run.sh runs the two lines below itself when the
wheel is there, and prints the ratios in its table): the device image
has torch 2.x, numpy, scipy and opt-einsum but no Opacus, so carry the
pure-python wheel (/.whl/ is git-ignored via .git/info/exclude; the device
tool's run needs carry: [".whl"]):
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp -d .whl opacus==1.6.0
and on the machine, before the benchmarks (e.g. as a step after run.sh's
torchb lines, guarded by [ -f .whl/opacus-*.whl ]):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
        --target /tmp/site .whl/opacus-*.whl && export PYTHONPATH=/tmp/site
    python3 bench/compare/opacus_dp.py --device cuda --mode both --preset tiny \\
        --precision fp32 --check        # next to run.sh's `bench tiny-fp32 ... --dp`
    python3 bench/compare/opacus_dp.py --device cuda --mode both \\
        --preset gpt2-small --precision bf16   # next to `bench gpt2s-bf16 ... --dp`
    ratio = nawal dp_train_tokens_per_s / opacus tokens_per_s (same preset and
    precision, same call). Or DEVICE=cuda bench/compare/dp_vs_opacus.sh
    --preset gpt2-small --precision bf16 (BUILD=the folder holding nawal-bench).
    Sizing (not yet measured on a GPU): tiny takes seconds; GPT-2 small
    materialises 8 x 124M per-example gradients in hooks mode (~4 GB in fp32,
    plus Opacus's (8, 50257, 768) embedding/LM-head per-example gradients,
    1.2 GB each), so give it memory and keep the preset's 3 warm-up and
    5 x 5 timed steps (or --repeats 3) inside a 15-minute device budget.

Output lines meant to be grepped:
    opacus mode=hooks device=cpu threads=1 tokens_per_s=1234 head=tied params=834432 (median of 5 x 20 steps)
    opacus mode=ghost device=cpu threads=1 skipped: <reason>
    opacus best tokens_per_s=... mode=... threads=...
"""

import argparse
import copy
import inspect
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu import PlainGPT2, loaded_blas_libs, make_adamw, parse_threads  # noqa: E402

try:
    import opacus
    from opacus import PrivacyEngine
except ImportError as e:  # say how to get it rather than a bare traceback
    raise SystemExit(f"opacus_dp: cannot import opacus ({e}); see this script's docstring "
                     f"for the install line (torch {torch.__version__})")

# torch warns about the backward hooks Opacus registers (on modules whose inputs are
# token ids, or non-full hooks in torch 1.13); harmless here, and once per step is noise.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Using a non-full backward hook")

PRESETS = {  # nawal-bench's presets (as bench/compare/torch_gpu.py)
    "tiny": dict(layers=4, heads=4, width=128, context=64, vocab=257, batch=12,
                 steps=20, warmup_steps=5),
    "gpt2-small": dict(layers=12, heads=12, width=768, context=1024, vocab=50257, batch=8,
                       steps=5, warmup_steps=3),
}


class OpacusGPT2(PlainGPT2):
    """PlainGPT2 with its LM head as a module and batched position ids (same function)."""

    def __init__(self, layers, heads, width, context, vocab, tied):
        super().__init__(layers, heads, width, context, vocab)
        self.tied = tied
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight  # one Parameter, two modules
        else:
            self.lm_head.weight = nn.Parameter(self.wte.weight.detach().clone())

    def forward(self, idx):
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(self.pos[:t].expand(b, t).contiguous())
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


class SeqCrossEntropy(nn.Module):
    """Cross-entropy of (B, T, V) logits: reduction 'none' gives one loss per sequence
    (mean over its positions), 'mean'/'sum' reduce those over the batch. Opacus's
    ghost-clipping loss wrapper switches .reduction to 'none' to get per-example losses."""

    def __init__(self):
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits, tgt):
        tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none")
        per_seq = tok.view(tgt.shape).mean(dim=1)
        if self.reduction == "none":
            return per_seq
        return per_seq.sum() if self.reduction == "sum" else per_seq.mean()


def ghost_unsupported_reason():
    """None when this Opacus has grad_sample_mode='ghost', else why not."""
    try:
        from opacus.grad_sample.utils import get_gsm_class
        get_gsm_class("ghost")
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping  # noqa: F401
        return None
    except (ImportError, ValueError) as e:
        return (f"Opacus {opacus.__version__} has no ghost clipping ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:80]}); grad_sample_mode='ghost' needs Opacus >= 1.5, "
                f"which needs torch >= 2.0 (this torch: {torch.__version__})")


def autocast(a, dev):
    """bf16: torch.autocast around forward and loss (as torch_gpu.py); else a no-op."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")


def make_batch(a, dev):
    g = torch.Generator().manual_seed(42)
    idx = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
    tgt = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
    return idx.to(dev), tgt.to(dev)


def build(a, mode, tied, dev, idx, tgt):
    """Model + Opacus wrapping. Returns dict(model, opt, crit, ref, n_params, label)."""
    torch.manual_seed(1234)
    model = OpacusGPT2(a.layers, a.heads, a.width, a.context, a.vocab, tied).to(dev)
    model.train()
    with torch.no_grad():  # same function as the imported PlainGPT2
        ref_logits = PlainGPT2.forward(model, idx[:2])
        ours = model(idx[:2])
        err = (ref_logits - ours).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref_logits.abs().max().item()), f"OpacusGPT2 != PlainGPT2 ({err})"
    n_params = sum(p.numel() for p in model.parameters())  # tied weight counted once
    opt, opt_label = make_adamw(model, a.adamw)  # (its fused probe step applies weight decay once)
    ref = copy.deepcopy(model) if a.check else None
    crit = SeqCrossEntropy()

    # One DataLoader batch of exactly --batch examples: sample rate 1, expected batch B.
    ds = torch.utils.data.TensorDataset(idx.cpu(), tgt.cpu())
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch)
    kw = dict(module=model, optimizer=opt, data_loader=dl, noise_multiplier=1.0,
              max_grad_norm=1.0, poisson_sampling=False, loss_reduction="mean",
              batch_first=True, clipping="flat", grad_sample_mode=mode)
    if mode == "ghost":
        kw["criterion"] = crit
    if "criterion" in kw and "criterion" not in inspect.signature(PrivacyEngine.make_private).parameters:
        raise RuntimeError("this Opacus's make_private takes no criterion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns that secure_mode is off
        engine = PrivacyEngine(accountant="rdp")
        out = engine.make_private(**kw)
    if mode == "ghost":
        gmodel, dpopt, crit, _ = out
    else:
        gmodel, dpopt, _ = out
    ebs = getattr(dpopt, "expected_batch_size", None)
    assert ebs == a.batch, f"Opacus expected_batch_size {ebs} != batch {a.batch}"
    return dict(model=gmodel, opt=dpopt, crit=crit, ref=ref, n_params=n_params,
                label=f"AdamW={opt_label}, {type(gmodel).__name__}, {type(dpopt).__name__}")


def check_norms(b, mode, idx, tgt, sync):
    """Per-example gradient norms from Opacus vs B batch-of-one backward passes."""
    model, opt, crit, ref = b["model"], b["opt"], b["crit"], b["ref"]
    opt.zero_grad(set_to_none=True)
    loss = crit(model(idx), tgt)
    loss.backward()
    sync()
    if mode == "hooks":
        sq = None
        for p in (q for grp in opt.param_groups for q in grp["params"]):
            gs = p.grad_sample
            if isinstance(gs, list):
                gs = torch.stack(gs).sum(0)
            s = gs.reshape(gs.shape[0], -1).pow(2).sum(1)
            sq = s if sq is None else sq + s
        got = sq.sqrt()
    else:
        got = getattr(model, "per_sample_gradient_norms", None)
        if got is None:
            opt.zero_grad(set_to_none=True)
            return "no per_sample_gradient_norms in this Opacus: not checked"
    opt.zero_grad(set_to_none=True)
    plain = SeqCrossEntropy()
    want = []
    for i in range(idx.shape[0]):
        ref.zero_grad(set_to_none=True)
        plain(ref(idx[i:i + 1]), tgt[i:i + 1]).backward()
        want.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters())))
    want = torch.stack(want).to(got.device)
    rel = ((got.double() - want.double()).abs() / want.double()).max().item()
    return (f"per-example norms vs {idx.shape[0]} batch-of-one passes: max rel err {rel:.2e} "
            f"(norms {want.min().item():.3g}..{want.max().item():.3g}, clip 1.0)"
            + ("" if rel < 1e-3 else "  ** MISMATCH **"))


def run_mode(a, mode, dev, thread_counts):
    """Times one mode; returns [(tokens_per_s, mode, threads)]."""
    devname = "cuda" if dev.type == "cuda" else "cpu"
    tag0 = f"opacus mode={mode} device={devname}"
    if mode == "ghost":
        why = ghost_unsupported_reason()
        if why:
            for n in thread_counts:
                print(f"{tag0} threads={n} skipped: {why}", flush=True)
            return []
    idx, tgt = make_batch(a, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    tries = {"tied": [True], "untied": [False], "auto": [True, False] if mode == "ghost" else [True]}[a.head]
    b = None
    checked = None
    for tied in tries:
        try:
            b = build(a, mode, tied, dev, idx, tgt)
            # Opacus refuses tying in ghost mode on the first forward: find out here,
            # with the norm check (forward + backward, no update) or one untimed step.
            if a.check:
                checked = check_norms(b, mode, idx, tgt, sync)
            else:
                b["opt"].zero_grad(set_to_none=True)
                with autocast(a, dev):
                    loss = b["crit"](b["model"](idx), tgt)
                loss.backward()
                b["opt"].step()
            b["tied"] = tied
            break
        except NotImplementedError as e:
            msg = str(e).splitlines()[0]
            print(f"  [{mode}] Opacus refused the {'tied' if tied else 'untied'} head: {msg}", flush=True)
            b = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if b is None:
        for n in thread_counts:
            print(f"{tag0} threads={n} skipped: Opacus refused every head variant tried", flush=True)
        return []
    if mode == "ghost" and b["tied"] is False:
        print(f"  [{mode}] running on an UNTIED LM head: {b['n_params']} parameters "
              f"(+{a.vocab * a.width} vs the tied model nawal trains)", flush=True)
    head = "tied" if b["tied"] else "untied"
    print(f"  [{mode}] {b['n_params']} parameters, head {head}, {b['label']}", flush=True)
    if checked:
        print(f"  [{mode}] check: {checked}", flush=True)
    b["ref"] = None

    model, opt, crit = b["model"], b["opt"], b["crit"]
    tokens_per_step = a.batch * a.context

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(a, dev):
            loss = crit(model(idx), tgt)
        loss.backward()  # ghost: both backward passes happen in here
        opt.step()       # clip (hooks) + noise + /B + AdamW
        return loss

    results = []
    for n in thread_counts:
        if dev.type == "cpu":
            torch.set_num_threads(n)
        loss = None
        for _ in range(a.warmup_steps):
            loss = step()
        sync()
        per_rep = []
        for r in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            sync()
            dt = time.perf_counter() - t0
            tps = a.steps * tokens_per_step / dt
            per_rep.append(tps)
            print(f"  [{mode} threads={n}] repeat {r + 1}: {tps:.0f} tokens/s "
                  f"({dt / a.steps * 1e3:.2f} ms/step)", flush=True)
        med = statistics.median(per_rep)
        lossv = float(loss.detach()) if loss is not None else float("nan")
        print(f"  [{mode} threads={n}] last loss {lossv:.4f}, torch.get_num_threads()={torch.get_num_threads()}")
        print(f"{tag0} threads={n} tokens_per_s={med:.0f} head={head} params={b['n_params']} "
              f"(median of {a.repeats} x {a.steps} steps)", flush=True)
        results.append((med, mode, n))
    b = model = opt = crit = step = None  # free the model before the next mode
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return results


def main():
    ap = argparse.ArgumentParser(description="Opacus DP-SGD GPT-2 training throughput (peer of nawal-bench train --dp)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--mode", choices=["hooks", "ghost", "both"], default="both")
    ap.add_argument("--head", choices=["auto", "tied", "untied"], default="auto",
                    help="LM head: auto = tied, untied for ghost mode when Opacus refuses tying")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for k in ["layers", "heads", "width", "context", "vocab", "batch", "steps"]:
        ap.add_argument("--" + k, type=int, default=None)
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=parse_threads, default=[1, 2], help="comma list, e.g. 1,2 (CPU)")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="tf32: TF32 matmuls (CUDA); bf16: torch.autocast(bfloat16) around forward + loss")
    ap.add_argument("--adamw", choices=["auto", "plain", "foreach", "fused"], default="auto")
    ap.add_argument("--check", action="store_true",
                    help="first compare Opacus's per-example norms with batch-of-one backward passes")
    a = ap.parse_args()
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.width % a.heads:
        ap.error("--width must be divisible by --heads")
    if min(a.layers, a.heads, a.width, a.context, a.batch, a.steps, a.repeats) < 1 or a.vocab < 2 \
            or a.warmup_steps < 0:
        ap.error("sizes must be positive")
    if a.precision == "tf32" and a.device != "cuda":
        ap.error("--precision tf32 is for --device cuda")

    print(f"opacus {opacus.__version__}, torch {torch.__version__} "
          f"(python {sys.version.split()[0]}, {sys.executable})")
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("opacus_dp: no CUDA device visible to PyTorch")
        dev = torch.device("cuda")
        tf32 = a.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        print(f"  device: {torch.cuda.get_device_name()}, precision {a.precision}")
        threads = [torch.get_num_threads()]
    else:
        dev = torch.device("cpu")
        libs = loaded_blas_libs()
        print(f"  BLAS libraries loaded: {', '.join(libs) if libs else 'none found in /proc/self/maps'}")
        if any("/blas/" in l or "netlib" in l for l in libs):
            print("  WARNING: reference (netlib) BLAS: install libopenblas0-pthread for a fair figure")
        threads = a.threads
    print(f"model: {a.layers} layers, {a.heads} heads, width {a.width}, context {a.context}, "
          f"vocab {a.vocab}; batch {a.batch} (fixed, no Poisson sampling); DP: flat clip 1.0, "
          f"noise multiplier 1.0; threads {threads}; {a.warmup_steps} warmup, "
          f"{a.repeats} x {a.steps} timed steps", flush=True)

    modes = ["hooks", "ghost"] if a.mode == "both" else [a.mode]
    results = []
    for m in modes:
        results += run_mode(a, m, dev, threads)
    if results:
        best = max(results)
        print(f"opacus best tokens_per_s={best[0]:.0f} mode={best[1]} threads={best[2]}")


if __name__ == "__main__":
    main()
