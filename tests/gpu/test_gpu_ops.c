/* test_gpu_ops.c - every op of the CUDA backend against the CPU backend
 * (itself tested against double-precision brute force in
 * tests/unit/test_cpu_ops.c), on fresh random inputs of awkward sizes (not
 * multiples of warp or block sizes), with outputs poisoned first and guard
 * words after them. Skips with one line per test when no GPU is present.
 *
 * Tolerances: both backends compute in fp32 but sum in different orders;
 * a sum of K products then differs by ~sqrt(K) * 6e-8 of its terms, far
 * below the 1e-5 x max|ref| allowed for reductions (a wrong stride, missed
 * row or transposed operand is off by O(1)). Per-element ops evaluate the
 * same shared formula and differ only by FMA contraction: 1e-6. tf32/bf16
 * round the operands to 10/7 mantissa bits, so 5e-3 / 3e-2 of max|ref|; we
 * also check those errors are well above fp32's, which proves the reduced
 * precision really ran on the tensor cores. */
#include "gpu_test_util.h"
#include "elementwise.h"

static void matmul_case(int N, int C, int OC, nawal_wlayout lay, int use_bias, int want_dinp, double tol, const char *tag,
                        double *err_out) {
    char what[160];
    dual inp = drandn((size_t)N * C, 1.0f), w = drandn((size_t)C * OC, 0.3f), bias = drandn(OC, 1.0f);
    dual out = dnew(NULL, (size_t)N * OC);
    CPU->matmul_fwd(CPU, out.c, inp.c, w.c, use_bias ? bias.c : NULL, N, C, OC, lay);
    GPU->matmul_fwd(GPU, out.g, inp.g, w.g, use_bias ? bias.g : NULL, N, C, OC, lay);
    snprintf(what, sizeof what, "%s matmul_fwd N=%d C=%d OC=%d layout=%d bias=%d", tag, N, C, OC, lay, use_bias);
    if (err_out) {
        float *hc = hf(out.n), *hg = hf(out.n);
        CPU->download(CPU, hc, out.c, out.n * sizeof(float));
        GPU->download(GPU, hg, out.g, out.n * sizeof(float));
        double mref = 0, merr = 0;
        for (size_t i = 0; i < out.n; i++) {
            mref = fmax(mref, fabs(hc[i]));
            merr = fmax(merr, fabs((double)hg[i] - hc[i]));
        }
        *err_out = merr / mref;
        free(hc);
        free(hg);
    }
    dcheck(what, out, tol);
    /* backward: dw and dbias accumulate into random contents */
    dual dout = drandn((size_t)N * OC, 1.0f), dinp = dnew(NULL, (size_t)N * C);
    dual dw = drandn((size_t)C * OC, 1.0f), db = drandn(OC, 1.0f);
    CPU->matmul_bwd(CPU, want_dinp ? dinp.c : NULL, dw.c, use_bias ? db.c : NULL, dout.c, inp.c, w.c, N, C, OC, lay);
    GPU->matmul_bwd(GPU, want_dinp ? dinp.g : NULL, dw.g, use_bias ? db.g : NULL, dout.g, inp.g, w.g, N, C, OC, lay);
    snprintf(what, sizeof what, "%s matmul_bwd dw N=%d C=%d OC=%d layout=%d", tag, N, C, OC, lay);
    dcheck(what, dw, tol);
    if (want_dinp) {
        snprintf(what, sizeof what, "%s matmul_bwd dinp N=%d C=%d OC=%d layout=%d", tag, N, C, OC, lay);
        dcheck(what, dinp, tol);
    }
    snprintf(what, sizeof what, "%s matmul_bwd dbias N=%d OC=%d", tag, N, OC);
    dcheck(what, db, tol);
    dual all[] = { inp, w, bias, out, dout, dinp, dw, db };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dfree(all[i]);
}

Test(gpu_ops, matmul_fwd_bwd_fp32) {
    gpu_start("gpu_ops.matmul");
    for (int r = 0; r < 6; r++) {
        int N = rnd(1, 300), C = rnd(1, 200), OC = rnd(1, 260);
        matmul_case(N, C, OC, r % 2 ? NAWAL_W_OUT_IN : NAWAL_W_IN_OUT, r % 3 != 0, r % 4 != 3, 1e-5, "fp32", NULL);
    }
    /* a GPT-ish shape with an odd vocabulary (tied head) */
    matmul_case(257, 64, 1001, NAWAL_W_OUT_IN, 0, 1, 1e-5, "fp32", NULL);
}

Test(gpu_ops, matmul_tf32_bf16) {
    gpu_start("gpu_ops.matmul_precision");
    char err[256];
    double e32, etf, ebf;
    matmul_case(193, 320, 131, NAWAL_W_IN_OUT, 1, 1, 1e-5, "fp32", &e32);
    cr_assert(GPU->set_precision(GPU, NAWAL_PREC_TF32, err, sizeof err) == 0, "%s", err);
    matmul_case(193, 320, 131, NAWAL_W_IN_OUT, 1, 1, 5e-3, "tf32", &etf);
    cr_assert(GPU->set_precision(GPU, NAWAL_PREC_BF16, err, sizeof err) == 0, "%s", err);
    matmul_case(193, 320, 131, NAWAL_W_OUT_IN, 1, 1, 3e-2, "bf16", &ebf);
    GPU->set_precision(GPU, NAWAL_PREC_FP32, err, sizeof err);
    cr_expect(etf > 10 * e32 && ebf > etf, "precision modes not in effect: fp32 err %.3g, tf32 %.3g, bf16 %.3g", e32, etf, ebf);
}

Test(gpu_ops, layernorm_fwd_bwd) {
    gpu_start("gpu_ops.layernorm");
    for (int r = 0; r < 4; r++) {
        int N = rnd(1, 700), C = rnd(1, 800);
        dual inp = drandn((size_t)N * C, 2.0f), w = drandn(C, 1.0f), b = drandn(C, 1.0f);
        dual out = dnew(NULL, (size_t)N * C), mean = dnew(NULL, N), rstd = dnew(NULL, N);
        CPU->layernorm_fwd(CPU, out.c, mean.c, rstd.c, inp.c, w.c, b.c, N, C);
        GPU->layernorm_fwd(GPU, out.g, mean.g, rstd.g, inp.g, w.g, b.g, N, C);
        dcheck("layernorm_fwd out", out, 1e-5);
        dcheck("layernorm_fwd mean", mean, 1e-5);
        dcheck("layernorm_fwd rstd", rstd, 1e-5);
        dual dout = drandn((size_t)N * C, 1.0f), dinp = drandn((size_t)N * C, 1.0f);
        dual dw = drandn(C, 1.0f), db = drandn(C, 1.0f);
        CPU->layernorm_bwd(CPU, dinp.c, dw.c, db.c, dout.c, inp.c, w.c, mean.c, rstd.c, N, C);
        GPU->layernorm_bwd(GPU, dinp.g, dw.g, db.g, dout.g, inp.g, w.g, mean.g, rstd.g, N, C);
        dcheck("layernorm_bwd dinp (+=)", dinp, 1e-5);
        dcheck("layernorm_bwd dw (+=)", dw, 1e-5);
        dcheck("layernorm_bwd db (+=)", db, 1e-5);
        dual all[] = { inp, w, b, out, mean, rstd, dout, dinp, dw, db };
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dfree(all[i]);
    }
}

/* flash (NAWAL_CUDA_ATTENTION=flash, attention_flash.cu): head sizes up to
 * 64 (both kernel instances), T across several 64-row blocks and 32-row
 * tiles; att and datt then hold per-row statistics, so only out and dqkv
 * are compared, plus a bitwise rerun (each output has one writer) */
static void attention_case(int flash) {
    if (flash) setenv("NAWAL_CUDA_ATTENTION", "flash", 1);
    else unsetenv("NAWAL_CUDA_ATTENTION");
    for (int r = 0; r < (flash ? 6 : 4); r++) {
        int NH = rnd(1, 5), hs = rnd(1, flash ? 64 : 40), B = rnd(1, 3), T = rnd(1, flash ? 200 : 77);
        if (r == 0) T = 1;
        if (flash && r == 1) { hs = 64; T = 129; }
        if (flash && r == 2) { hs = 33; T = 64; }
        int C = NH * hs;
        dual qkv = drandn((size_t)B * T * 3 * C, 1.0f);
        dual out = dnew(NULL, (size_t)B * T * C), att = dnew(NULL, (size_t)B * NH * T * T);
        CPU->attention_fwd(CPU, out.c, att.c, qkv.c, B, T, C, NH);
        GPU->attention_fwd(GPU, out.g, att.g, qkv.g, B, T, C, NH);
        char what[128];
        snprintf(what, sizeof what, "%s attention_fwd out B=%d T=%d NH=%d hs=%d", flash ? "flash" : "gemm", B, T, NH, hs);
        dcheck(what, out, 2e-5);
        if (!flash) {
            snprintf(what, sizeof what, "attention_fwd att B=%d T=%d NH=%d hs=%d", B, T, NH, hs);
            dcheck(what, att, 2e-5);
        }
        dual dout = drandn((size_t)B * T * C, 1.0f), dqkv = dnew(NULL, (size_t)B * T * 3 * C);
        dual datt = dnew(NULL, (size_t)B * NH * T * T);
        CPU->attention_bwd(CPU, dqkv.c, datt.c, dout.c, qkv.c, att.c, B, T, C, NH);
        GPU->attention_bwd(GPU, dqkv.g, datt.g, dout.g, qkv.g, att.g, B, T, C, NH);
        snprintf(what, sizeof what, "%s attention_bwd dqkv B=%d T=%d NH=%d hs=%d", flash ? "flash" : "gemm", B, T, NH, hs);
        dcheck(what, dqkv, 2e-5);
        if (flash) {
            size_t no = (size_t)B * T * C, nq = 3 * no;
            float *o1 = hf(no), *o2 = hf(no), *g1 = hf(nq), *g2 = hf(nq);
            GPU->download(GPU, o1, out.g, no * sizeof(float));
            GPU->download(GPU, g1, dqkv.g, nq * sizeof(float));
            GPU->attention_fwd(GPU, out.g, att.g, qkv.g, B, T, C, NH);
            GPU->attention_bwd(GPU, dqkv.g, datt.g, dout.g, qkv.g, att.g, B, T, C, NH);
            GPU->download(GPU, o2, out.g, no * sizeof(float));
            GPU->download(GPU, g2, dqkv.g, nq * sizeof(float));
            cr_expect(memcmp(o1, o2, no * sizeof(float)) == 0 && memcmp(g1, g2, nq * sizeof(float)) == 0,
                      "flash attention rerun not bitwise identical (B=%d T=%d NH=%d hs=%d, seed %llu)", B, T, NH, hs, SEED);
            free(o1); free(o2); free(g1); free(g2);
        }
        dual all[] = { qkv, out, att, dout, dqkv, datt };
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dfree(all[i]);
    }
    unsetenv("NAWAL_CUDA_ATTENTION");
}

Test(gpu_ops, attention_fwd_bwd) {
    gpu_start("gpu_ops.attention");
    attention_case(0);
}

Test(gpu_ops, attention_flash) {
    gpu_start("gpu_ops.attention_flash");
    attention_case(1);
}

Test(gpu_ops, elementwise) {
    gpu_start("gpu_ops.elementwise");
    size_t n = (size_t)rnd(1, 300000);
    dual x = drandn(n, 3.0f), y = drandn(n, 1.0f), out = dnew(NULL, n), out2 = dnew(NULL, n), out3 = dnew(NULL, n);
    GPU->gelu_fwd(GPU, out.g, x.g, n);
    CPU->gelu_fwd(CPU, out.c, x.c, n);
    dcheck("gelu_fwd", out, 1e-6);
    GPU->gelu_bwd(GPU, out2.g, x.g, y.g, n);
    CPU->gelu_bwd(CPU, out2.c, x.c, y.c, n);
    dcheck("gelu_bwd", out2, 1e-6);
    dual yy = dnew(NULL, n); /* gelu_bwd in place on dout */
    GPU->copy(GPU, yy.g, y.g, n);
    CPU->copy(CPU, yy.c, y.c, n);
    GPU->gelu_bwd(GPU, yy.g, x.g, yy.g, n);
    CPU->gelu_bwd(CPU, yy.c, x.c, yy.c, n);
    dcheck("gelu_bwd aliased", yy, 1e-6);
    GPU->residual_fwd(GPU, out3.g, x.g, y.g, n);
    CPU->residual_fwd(CPU, out3.c, x.c, y.c, n);
    dcheck("residual_fwd", out3, 1e-7);
    float a = nrm();
    GPU->axpy(GPU, y.g, a, x.g, n);
    CPU->axpy(CPU, y.c, a, x.c, n);
    dcheck_keep("axpy", y, 1e-6, NULL);
    GPU->scale(GPU, y.g, a, n);
    CPU->scale(CPU, y.c, a, n);
    dcheck_keep("scale", y, 1e-6, NULL);
    dual f = dnew(NULL, n);
    GPU->fill(GPU, f.g, a, n);
    CPU->fill(CPU, f.c, a, n);
    dcheck("fill", f, 0.0);
    double sc = CPU->sumsq(CPU, x.c, n), sg = GPU->sumsq(GPU, x.g, n), sg2 = GPU->sumsq(GPU, x.g, n);
    cr_expect(fabs(sg - sc) <= 1e-12 * sc, "sumsq gpu %.17g cpu %.17g (seed %llu)", sg, sc, SEED);
    cr_expect(sg == sg2, "sumsq not deterministic: %.17g then %.17g", sg, sg2);
    dual all[] = { x, y, out, out2, out3, yy, f };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dfree(all[i]);
}

Test(gpu_ops, optimizers) {
    gpu_start("gpu_ops.optim");
    size_t n = (size_t)rnd(1000, 200000);
    dual p = drandn(n, 1.0f), g = drandn(n, 1.0f), m = drandn(n, 0.1f), v = drandn(n, 0.1f);
    /* v is a second moment: make it non-negative on both sides */
    float *hv = hf(n);
    CPU->download(CPU, hv, v.c, n * sizeof(float));
    for (size_t i = 0; i < n; i++) hv[i] = fabsf(hv[i]);
    CPU->upload(CPU, v.c, hv, n * sizeof(float));
    GPU->upload(GPU, v.g, hv, n * sizeof(float));
    free(hv);
    for (int t = 1; t <= 3; t++) {
        CPU->adamw(CPU, p.c, g.c, m.c, v.c, n, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.1f, t);
        GPU->adamw(GPU, p.g, g.g, m.g, v.g, n, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.1f, t);
    }
    dcheck_keep("adamw p", p, 1e-6, NULL);
    dcheck_keep("adamw m", m, 1e-6, NULL);
    dcheck_keep("adamw v", v, 1e-6, NULL);
    CPU->sgd(CPU, p.c, g.c, m.c, n, 0.05f, 0.9f, 0.01f);
    GPU->sgd(GPU, p.g, g.g, m.g, n, 0.05f, 0.9f, 0.01f);
    dcheck("sgd p", p, 1e-6);
    dcheck("sgd buf", m, 1e-6);
    dfree(p); dfree(m); dfree(g); dfree(v);
}

Test(gpu_ops, embedding_fwd_bwd) {
    gpu_start("gpu_ops.embedding");
    for (int r = 0; r < 3; r++) {
        int B = rnd(1, 5), T = rnd(1, 90), C = rnd(1, 300), V = r == 0 ? 3 : rnd(2, 500); /* V=3: long runs */
        int N = B * T;
        int32_t *tok = malloc((size_t)N * sizeof(int32_t));
        for (int i = 0; i < N; i++) tok[i] = test_rand_int(&g_rng, V);
        int32_t *tc = inew(CPU, tok, N), *tg = inew(GPU, tok, N);
        dual wte = drandn((size_t)V * C, 1.0f), wpe = drandn((size_t)T * C, 1.0f), out = dnew(NULL, (size_t)N * C);
        CPU->embedding_fwd(CPU, out.c, tc, wte.c, wpe.c, B, T, C);
        GPU->embedding_fwd(GPU, out.g, tg, wte.g, wpe.g, B, T, C);
        dcheck("embedding_fwd", out, 1e-7);
        dual dout = drandn((size_t)N * C, 1.0f), dwte = drandn((size_t)V * C, 1.0f), dwpe = drandn((size_t)T * C, 1.0f);
        float *first = hf(dwte.n), *again = hf(dwte.n);
        float *h0 = hf(dwte.n);
        GPU->download(GPU, h0, dwte.g, dwte.n * sizeof(float));
        CPU->embedding_bwd(CPU, dwte.c, dwpe.c, dout.c, tc, B, T, C);
        GPU->embedding_bwd(GPU, dwte.g, dwpe.g, dout.g, tg, B, T, C);
        dcheck_keep("embedding_bwd dwte (+=)", dwte, 1e-6, first);
        dcheck_keep("embedding_bwd dwpe (+=)", dwpe, 1e-6, NULL);
        /* determinism: the same scatter from the same start gives the same bits */
        GPU->upload(GPU, dwte.g, h0, dwte.n * sizeof(float));
        GPU->embedding_bwd(GPU, dwte.g, dwpe.g, dout.g, tg, B, T, C);
        GPU->download(GPU, again, dwte.g, dwte.n * sizeof(float));
        cr_expect(memcmp(first, again, dwte.n * sizeof(float)) == 0, "embedding_bwd not bitwise repeatable (seed %llu)", SEED);
        free(first); free(again); free(h0); free(tok);
        CPU->free(CPU, tc); GPU->free(GPU, tg);
        dual all[] = { wte, wpe, out, dout, dwte, dwpe };
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dfree(all[i]);
    }
}

static void xent_case(int N, int V, float gs, const char *tag) {
    int32_t *tgt = malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tgt[i] = test_rand_int(&g_rng, 5) == 0 ? -1 : test_rand_int(&g_rng, V);
    int32_t *tc = inew(CPU, tgt, N), *tg = inew(GPU, tgt, N);
    dual logits = drandn((size_t)N * V, 4.0f), loss = dnew(NULL, N);
    CPU->softmax_xent(CPU, logits.c, loss.c, tc, N, V, gs);
    GPU->softmax_xent(GPU, logits.g, loss.g, tg, N, V, gs);
    char what[128];
    snprintf(what, sizeof what, "softmax_xent %s losses N=%d V=%d", tag, N, V);
    dcheck(what, loss, 1e-5);
    snprintf(what, sizeof what, "softmax_xent %s grads N=%d V=%d scale=%g", tag, N, V, gs);
    dcheck(what, logits, 1e-5);
    free(tgt);
    CPU->free(CPU, tc); GPU->free(GPU, tg);
    dfree(logits); dfree(loss);
}

Test(gpu_ops, softmax_xent) {
    gpu_start("gpu_ops.softmax_xent");
    xent_case(rnd(1, 200), rnd(2, 1500), 1.0f / 37.0f, "grad");
    xent_case(rnd(1, 50), rnd(2, 700), 0.0f, "loss-only");
    xent_case(5, 50257, 0.25f, "gpt2-vocab");
}
