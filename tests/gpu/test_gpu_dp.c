/* test_gpu_dp.c - the CUDA backend's DP-SGD per-example ops (ops.h,
 * "differential privacy") against the CPU backend, itself checked against
 * double-precision brute force in tests/unit/test_cpu_dp_ops.c. Random
 * inputs (rows of varied magnitude) on awkward shapes, both the ghost and
 * the materialised path of pe_norm_linear (and of the tied op's LM-head
 * part), repeated tokens for the tied op; "+=" norms are pre-filled with
 * random values, every output carries guard words. Skips with one line per
 * test when no GPU is present.
 *
 * Norm tolerance: |gpu - cpu| <= 1e-5 |cpu - prefill| (the op's own
 * contribution) + 4 x 2^-24 |cpu|. Both backends form the same sums of
 * products in fp32 (Gram matrices or the materialised gradient, cuBLAS
 * versus oneDNN) and reduce them in double, in different orders and, for
 * the linear op, possibly by different paths (the CPU picks ghost or
 * materialised by FLOPs, the GPU by scratch size; both give the same
 * norm). An fp32 dot product of length K <= ~5000 here errs by
 * ~sqrt(K) 2^-24 of its terms' magnitudes, and for random data those
 * errors average out over the T^2 or d p terms of a norm: the two sides
 * agree to ~1e-6 of the contribution. The second term covers the final
 * roundings to float (one on the CPU, up to two on the GPU for the tied op:
 * it adds E and the cross term, then H). A wrong stride, a missed position
 * or example, or a lost cross term is off by >= ~1/T of the norm.
 *
 * add_noise: both backends evaluate the same libm-free Philox4x32-10 +
 * Box-Muller formula (nawal_philox_gauss4) with single IEEE operations (no
 * FMA on either side), so the outputs must be bitwise equal; GPU reruns too. */
#include "gpu_test_util.h"

/* each norm op takes one op of the CPU backend, which another change may
 * not have filled in yet: say so rather than crash */
static void need_cpu_dp(void) {
    cr_assert(CPU->pe_norm_linear && CPU->pe_norm_bias && CPU->pe_norm_layernorm && CPU->pe_norm_rows &&
                  CPU->pe_norm_tied && CPU->scale_examples && CPU->add_noise,
              "the CPU backend has no DP ops: nothing to compare against");
}

/* n normal entries, each row of `row` entries scaled by its own factor in [0.25, 2] */
static dual drows(size_t rows, size_t row, float scale) {
    float *h = hf(rows * row);
    for (size_t r = 0; r < rows; r++) {
        float f = scale * (0.25f + 1.75f * (float)test_rand_unit(&g_rng));
        for (size_t c = 0; c < row; c++) h[r * row + c] = f * nrm();
    }
    dual d = dnew(h, rows * row);
    free(h);
    return d;
}

/* norms[B] pre-filled with the same |N(0,1)| values on both backends; pre gets them */
static dual norms_new(int B, float *pre) {
    for (int b = 0; b < B; b++) pre[b] = fabsf(nrm());
    return dnew(pre, (size_t)B);
}

/* per-norm check (see the tolerance above) and guards; out_gpu (optional) gets the GPU values */
static bool ncheck(const char *what, dual nm, const float *pre, float *out_gpu) {
    size_t n = nm.n;
    float *hc = hf(n + GUARD), *hg = hf(n + GUARD);
    CPU->download(CPU, hc, nm.c, (n + GUARD) * sizeof(float));
    GPU->download(GPU, hg, nm.g, (n + GUARD) * sizeof(float));
    bool ok = true;
    for (size_t b = 0; b < n; b++) {
        double c = hc[b], g = hg[b], allow = 1e-5 * fabs(c - pre[b]) + 4.0 * 0x1p-24 * fabs(c);
        bool good = isfinite(g) && fabs(g - c) <= allow;
        cr_expect(good, "%s: norm[%zu] gpu %.9g cpu %.9g (prefill %.9g): |diff| %.3g > %.3g (seed %llu)", what, b, g,
                  c, (double)pre[b], fabs(g - c), allow, SEED);
        ok &= good;
    }
    for (size_t i = n; i < n + GUARD; i++) {
        cr_expect(hg[i] == GUARD_VAL, "%s: GPU wrote past the end of norms[%zu] (seed %llu)", what, n, SEED);
        ok &= hg[i] == GUARD_VAL;
    }
    if (out_gpu) memcpy(out_gpu, hg, n * sizeof(float));
    free(hc);
    free(hg);
    return ok;
}

/* the GPU again from the same prefill: the same bits */
static void rerun_same(const char *what, dual nm, const float *pre, const float *first, void (*op)(void *ctx, float *norms),
                       void *ctx) {
    float *again = hf(nm.n);
    GPU->upload(GPU, nm.g, pre, nm.n * sizeof(float));
    op(ctx, nm.g);
    GPU->download(GPU, again, nm.g, nm.n * sizeof(float));
    cr_expect(memcmp(first, again, nm.n * sizeof(float)) == 0, "%s: GPU rerun not bitwise identical (seed %llu)", what,
              SEED);
    free(again);
}

typedef struct { const float *A, *D; int B, T, d, p; } linear_args;
static void linear_gpu(void *ctx, float *norms) {
    linear_args *a = ctx;
    GPU->pe_norm_linear(GPU, norms, a->A, a->D, a->B, a->T, a->d, a->p);
}

static void linear_case(int B, int T, int d, int p, bool rerun) {
    char what[160];
    /* the GPU's path choice (ops.h: ghost when 2 T^2 < d p) */
    snprintf(what, sizeof what, "pe_norm_linear B=%d T=%d d=%d p=%d (%s on the GPU)", B, T, d, p,
             2LL * T * T < (long long)d * p ? "ghost" : "materialised");
    dual A = drows((size_t)B * T, d, 1.0f), D = drows((size_t)B * T, p, 0.5f);
    float *pre = hf(B), *first = hf(B);
    dual nm = norms_new(B, pre);
    CPU->pe_norm_linear(CPU, nm.c, A.c, D.c, B, T, d, p);
    GPU->pe_norm_linear(GPU, nm.g, A.g, D.g, B, T, d, p);
    ncheck(what, nm, pre, first);
    if (rerun) {
        linear_args a = { A.g, D.g, B, T, d, p };
        rerun_same(what, nm, pre, first, linear_gpu, &a);
    }
    free(pre);
    free(first);
    dfree(A); dfree(D); dfree(nm);
}

Test(gpu_dp, pe_norm_linear) {
    gpu_start("gpu_dp.linear");
    need_cpu_dp();
    /* ghost on the GPU: 2 T^2 <= 1152 < 1600 <= d p */
    for (int r = 0; r < 4; r++) linear_case(rnd(1, 5), rnd(1, 24), rnd(40, 300), rnd(40, 300), r == 0);
    /* materialised: 2 T^2 >= 800 >= 560 >= d p */
    for (int r = 0; r < 4; r++) linear_case(rnd(1, 5), rnd(20, 90), rnd(1, 14), rnd(1, 40), r == 0);
    linear_case(3, 6, 8, 9, false);  /* 2 T^2 == d p: materialised */
    linear_case(3, 6, 8, 10, false); /* just ghost */
    linear_case(1, 1, 1, 1, false);
    linear_case(2, 64, 96, 384, true);  /* GPT-ish attention projection, ghost */
    linear_case(2, 200, 33, 65, false); /* long sequence, narrow layer: materialised */
}

/* pe_bound_linear: (sum_t ||A_b[t]|| ||D_b[t]||)^2 against the CPU's, rows
 * over several of the kernel's 256-thread strides */
Test(gpu_dp, pe_bound_linear) {
    gpu_start("gpu_dp.bound");
    cr_assert(CPU->pe_bound_linear && GPU->pe_bound_linear, "a backend has no pe_bound_linear");
    for (int r = 0; r < 5; r++) {
        int B = rnd(1, 5), T = r == 0 ? 1 : rnd(1, 700), d = rnd(1, 200), p = rnd(1, 200);
        char what[128];
        snprintf(what, sizeof what, "pe_bound_linear B=%d T=%d d=%d p=%d", B, T, d, p);
        dual A = drows((size_t)B * T, d, 1.0f), D = drows((size_t)B * T, p, 0.5f);
        float *pre = hf(B);
        dual nm = norms_new(B, pre);
        CPU->pe_bound_linear(CPU, nm.c, A.c, D.c, B, T, d, p);
        GPU->pe_bound_linear(GPU, nm.g, A.g, D.g, B, T, d, p);
        ncheck(what, nm, pre, NULL);
        free(pre);
        dfree(A); dfree(D); dfree(nm);
    }
}

Test(gpu_dp, pe_norm_bias_layernorm_rows) {
    gpu_start("gpu_dp.small");
    need_cpu_dp();
    for (int r = 0; r < 4; r++) {
        int B = rnd(1, 6), T = rnd(1, 130), C = r == 0 ? rnd(1, 40) : rnd(1, 800);
        size_t N = (size_t)B * T;
        char what[128];
        dual D = drows(N, C, 1.0f);
        /* layernorm inputs: rows with their own offset and spread; mean and
         * rstd computed here in double, the same values for both backends */
        float *hin = hf(N * C), *hm = hf(N), *hr = hf(N);
        for (size_t n = 0; n < N; n++) {
            float off = 3.0f * nrm(), sp = 0.1f + 2.0f * (float)test_rand_unit(&g_rng);
            double s = 0.0, s2 = 0.0;
            for (int c = 0; c < C; c++) { hin[n * C + c] = off + sp * nrm(); s += hin[n * C + c]; }
            double m = s / C;
            for (int c = 0; c < C; c++) { double e = hin[n * C + c] - m; s2 += e * e; }
            hm[n] = (float)m;
            hr[n] = (float)(1.0 / sqrt(s2 / C + 1e-5));
        }
        dual inp = dnew(hin, N * C), mean = dnew(hm, N), rstd = dnew(hr, N);
        float *pre = hf(B);

        dual nm = norms_new(B, pre);
        CPU->pe_norm_bias(CPU, nm.c, D.c, B, T, C);
        GPU->pe_norm_bias(GPU, nm.g, D.g, B, T, C);
        snprintf(what, sizeof what, "pe_norm_bias B=%d T=%d p=%d", B, T, C);
        ncheck(what, nm, pre, NULL);
        dfree(nm);

        nm = norms_new(B, pre);
        CPU->pe_norm_layernorm(CPU, nm.c, D.c, inp.c, mean.c, rstd.c, B, T, C);
        GPU->pe_norm_layernorm(GPU, nm.g, D.g, inp.g, mean.g, rstd.g, B, T, C);
        snprintf(what, sizeof what, "pe_norm_layernorm B=%d T=%d C=%d", B, T, C);
        ncheck(what, nm, pre, NULL);
        dfree(nm);

        nm = norms_new(B, pre);
        CPU->pe_norm_rows(CPU, nm.c, D.c, B, T, C);
        GPU->pe_norm_rows(GPU, nm.g, D.g, B, T, C);
        snprintf(what, sizeof what, "pe_norm_rows B=%d T=%d C=%d", B, T, C);
        ncheck(what, nm, pre, NULL);
        dfree(nm);

        free(hin); free(hm); free(hr); free(pre);
        dfree(D); dfree(inp); dfree(mean); dfree(rstd);
    }
}

typedef struct { const float *dres, *lnf, *dl; const int32_t *tok; int B, T, C, V; } tied_args;
static void tied_gpu(void *ctx, float *norms) {
    tied_args *a = ctx;
    GPU->pe_norm_tied(GPU, norms, a->dres, a->tok, a->lnf, a->dl, a->B, a->T, a->C, a->V);
}

/* tokens from a pool of `pool` consecutive ids (pool small: many repeats);
 * the last position repeats the first, so every example with T > 1 has one */
static void tied_case(int B, int T, int C, int V, int pool, bool rerun) {
    char what[192];
    snprintf(what, sizeof what, "pe_norm_tied B=%d T=%d C=%d V=%d pool=%d (LM head %s on the GPU)", B, T, C, V, pool,
             2LL * T * T < (long long)C * V ? "ghost" : "materialised");
    size_t N = (size_t)B * T;
    int32_t *tok = malloc(N * sizeof(int32_t));
    cr_assert(tok != NULL);
    int base = test_rand_int(&g_rng, V - pool + 1);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) tok[(size_t)b * T + t] = base + test_rand_int(&g_rng, pool);
        tok[(size_t)b * T + T - 1] = tok[(size_t)b * T];
    }
    int32_t *tc = inew(CPU, tok, N), *tg = inew(GPU, tok, N);
    dual dres = drows(N, C, 1.0f), lnf = drows(N, C, 1.0f), dl = drows(N, V, 0.5f);
    float *pre = hf(B), *first = hf(B);
    dual nm = norms_new(B, pre);
    CPU->pe_norm_tied(CPU, nm.c, dres.c, tc, lnf.c, dl.c, B, T, C, V);
    GPU->pe_norm_tied(GPU, nm.g, dres.g, tg, lnf.g, dl.g, B, T, C, V);
    ncheck(what, nm, pre, first);
    if (rerun) {
        tied_args a = { dres.g, lnf.g, dl.g, tg, B, T, C, V };
        rerun_same(what, nm, pre, first, tied_gpu, &a);
    }
    free(tok); free(pre); free(first);
    CPU->free(CPU, tc); GPU->free(GPU, tg);
    dfree(dres); dfree(lnf); dfree(dl); dfree(nm);
}

Test(gpu_dp, pe_norm_tied) {
    gpu_start("gpu_dp.tied");
    need_cpu_dp();
    /* LM-head part ghost: 2 T^2 <= 3200 < 6000 <= C V */
    for (int r = 0; r < 3; r++) {
        int V = rnd(300, 900);
        tied_case(rnd(1, 4), rnd(2, 40), rnd(20, 90), V, r == 2 ? V : rnd(1, 6), r == 0);
    }
    /* materialised: 2 T^2 >= 1800 > 400 >= C V */
    for (int r = 0; r < 2; r++) {
        int V = rnd(2, 50);
        tied_case(rnd(1, 4), rnd(30, 60), rnd(1, 8), V, rnd(1, V < 5 ? V : 5), r == 0);
    }
    tied_case(1, 1, 3, 7, 1, false);          /* one position */
    tied_case(3, 17, 5, 4, 1, false);          /* every token the same */
    tied_case(2, 64, 48, 5003, 40, true);     /* GPT-ish: odd vocabulary */
}

Test(gpu_dp, scale_examples) {
    gpu_start("gpu_dp.scale");
    need_cpu_dp();
    for (int r = 0; r < 3; r++) {
        int B = rnd(1, 7);
        size_t n = (size_t)rnd(1, 50000);
        float *hs = hf(B);
        for (int b = 0; b < B; b++) hs[b] = b == 0 ? 1.0f : b == 1 ? 0.0f : (float)test_rand_unit(&g_rng);
        dual x = drandn((size_t)B * n, 2.0f), sc = dnew(hs, B);
        CPU->scale_examples(CPU, x.c, sc.c, B, n);
        GPU->scale_examples(GPU, x.g, sc.g, B, n);
        char what[96];
        snprintf(what, sizeof what, "scale_examples B=%d n=%zu", B, n);
        dcheck(what, x, 0.0); /* one float multiply per element: exact */
        free(hs);
        dfree(x); dfree(sc);
    }
}

static void noise_case(size_t n, float std, bool zero) {
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    float *h0 = zero ? hf(n) : hrandn(n, 1.0f), *first = hf(n), *again = hf(n);
    dual x = dnew(h0, n);
    CPU->add_noise(CPU, x.c, n, std, key, stream);
    GPU->add_noise(GPU, x.g, n, std, key, stream);
    char what[160];
    snprintf(what, sizeof what, "add_noise n=%zu std=%g key=%llx stream=%llx", n, std, (unsigned long long)key,
             (unsigned long long)stream);
    dcheck_keep(what, x, 0.0, first);
    float *cpu = hf(n);
    CPU->download(CPU, cpu, x.c, n * sizeof(float));
    cr_expect(memcmp(first, cpu, n * sizeof(float)) == 0, "%s: GPU noise differs from the CPU's bits (seed %llu)", what, SEED);
    free(cpu);
    GPU->upload(GPU, x.g, h0, n * sizeof(float));
    GPU->add_noise(GPU, x.g, n, std, key, stream);
    GPU->download(GPU, again, x.g, n * sizeof(float));
    cr_expect(memcmp(first, again, n * sizeof(float)) == 0, "%s: GPU rerun not bitwise identical (seed %llu)", what,
              SEED);
    free(h0); free(first); free(again);
    dfree(x);
}

Test(gpu_dp, add_noise) {
    gpu_start("gpu_dp.noise");
    need_cpu_dp();
    noise_case(1, 1.0f, true);
    noise_case(2, 1.0f, true);
    noise_case(7, 0.5f, true);
    noise_case((size_t)rnd(1000, 300000) | 1, 0.8f, false); /* odd: the last pair has one element */
    noise_case((size_t)rnd(1000, 300000) & ~(size_t)1, 1.0f, true);
}

/* ---- per-example gradients, materialised (the per-example DP method) ----
 * Example b's tensors b * stride floats apart with gaps between them: the
 * tensors start as NaN (a float the op does not write stays NaN and fails
 * dcheck's finiteness check), the gaps as guard words that both backends
 * must leave alone (a GPU write there differs from the CPU's guard). */
static dual slots_new(int B, size_t stride, size_t n_written_lo, size_t n_written_hi, size_t b_lo, size_t b_hi) {
    float *h = hf((size_t)B * stride);
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < stride; i++)
            h[(size_t)b * stride + i] = (i >= n_written_lo && i < n_written_hi) || (i >= b_lo && i < b_hi) ? NAN : GUARD_VAL;
    dual d = dnew(h, (size_t)B * stride);
    free(h);
    return d;
}

/* the slots' tensors [lo1, hi1) and [lo2, hi2) of every example: GPU vs
 * CPU within tol x max |cpu| over the tensors, every entry finite; the gaps
 * still guard words on the GPU */
static void slots_check(const char *what, dual sl, int B, size_t stride, size_t lo1, size_t hi1, size_t lo2, size_t hi2,
                        double tol) {
    float *hc = hf(sl.n), *hg = hf(sl.n);
    CPU->download(CPU, hc, sl.c, sl.n * sizeof(float));
    GPU->download(GPU, hg, sl.g, sl.n * sizeof(float));
    double mref = 1e-30, merr = 0.0;
    size_t worst = 0, bad = 0, gap_writes = 0;
    for (size_t i = 0; i < (size_t)B * stride; i++) {
        size_t k = i % stride;
        if (!((k >= lo1 && k < hi1) || (k >= lo2 && k < hi2))) {
            gap_writes += hg[i] != GUARD_VAL;
            continue;
        }
        if (!isfinite(hg[i]) || !isfinite(hc[i])) { bad++; continue; }
        double e = fabs((double)hg[i] - hc[i]);
        if (e > merr) { merr = e; worst = i; }
        if (fabs(hc[i]) > mref) mref = fabs(hc[i]);
    }
    cr_expect(bad == 0, "%s: %zu gradient entries not finite (unwritten) (seed %llu)", what, bad, SEED);
    cr_expect(gap_writes == 0, "%s: the GPU wrote %zu floats between the tensors (seed %llu)", what, gap_writes, SEED);
    cr_expect(merr <= tol * mref, "%s: max |gpu-cpu| %.3g at %zu (gpu %.9g cpu %.9g) > %.1g x max|cpu| %.3g (seed %llu)",
              what, merr, worst, hg[worst], hc[worst], tol, mref, SEED);
    free(hc);
    free(hg);
}

/* prec: the GPU's matmul precision (the CPU runs bf16 where it can, else
 * fp32); tol relative to the largest gradient entry */
static void pe_linear_case(int B, int T, int C, int OC, nawal_wlayout layout, int bias, nawal_precision prec, double tol) {
    char what[192], err[256];
    snprintf(what, sizeof what, "pe_grad_linear %s B=%d T=%d C=%d OC=%d %s%s", nawal_precision_name(prec), B, T, C, OC,
             layout == NAWAL_W_IN_OUT ? "in_out" : "out_in", bias ? " +bias" : "");
    size_t N = (size_t)B * T, nw = (size_t)C * OC, boff = nw + (size_t)rnd(1, 9);
    size_t stride = boff + (size_t)OC + (size_t)rnd(1, 70);
    dual inp = drows(N, C, 1.0f), dout = drows(N, OC, 0.5f);
    dual sl = slots_new(B, stride, 0, nw, bias ? boff : 0, bias ? boff + OC : 0);
    cr_assert(GPU->set_precision(GPU, prec, err, sizeof err) == 0, "%s", err);
    if (prec == NAWAL_PREC_BF16) CPU->set_precision(CPU, NAWAL_PREC_BF16, err, sizeof err); /* else it stays fp32 */
    CPU->pe_grad_linear(CPU, sl.c, bias ? sl.c + boff : NULL, stride, dout.c, inp.c, B, T, C, OC, layout);
    GPU->pe_grad_linear(GPU, sl.g, bias ? sl.g + boff : NULL, stride, dout.g, inp.g, B, T, C, OC, layout);
    CPU->set_precision(CPU, NAWAL_PREC_FP32, err, sizeof err);
    GPU->set_precision(GPU, NAWAL_PREC_FP32, err, sizeof err);
    slots_check(what, sl, B, stride, 0, nw, bias ? boff : 0, bias ? boff + OC : 0, tol);
    dfree(inp); dfree(dout); dfree(sl);
}

Test(gpu_dp, pe_grad_linear) {
    gpu_start("gpu_dp.pe_grad_linear");
    cr_assert(CPU->pe_grad_linear && GPU->pe_grad_linear, "a backend has no pe_grad_linear");
    const nawal_precision precs[3] = { NAWAL_PREC_FP32, NAWAL_PREC_TF32, NAWAL_PREC_BF16 };
    const double tols[3] = { 1e-5, 5e-3, 2e-2 };
    for (int p = 0; p < 3; p++) {
        for (int r = 0; r < 4; r++)
            pe_linear_case(rnd(1, 6), rnd(1, 90), rnd(1, 200), rnd(1, 300), r % 2 ? NAWAL_W_OUT_IN : NAWAL_W_IN_OUT,
                           r != 3, precs[p], tols[p]);
        pe_linear_case(3, 64, 96, 288, NAWAL_W_IN_OUT, 1, precs[p], tols[p]);  /* GPT-ish qkv */
        pe_linear_case(2, 37, 48, 5003, NAWAL_W_OUT_IN, 0, precs[p], tols[p]); /* an LM head, odd vocabulary */
    }
}

Test(gpu_dp, pe_grad_layernorm_and_sum) {
    gpu_start("gpu_dp.pe_grad_ln_sum");
    cr_assert(CPU->pe_grad_layernorm && GPU->pe_grad_layernorm && CPU->pe_sum && GPU->pe_sum, "a backend lacks the ops");
    for (int r = 0; r < 4; r++) {
        int B = rnd(1, 6), T = rnd(1, 300), C = r == 0 ? rnd(1, 40) : rnd(1, 900);
        size_t N = (size_t)B * T, boff = (size_t)C + (size_t)rnd(0, 9), stride = boff + (size_t)C + (size_t)rnd(1, 9);
        char what[128];
        dual D = drows(N, C, 1.0f), inp = drows(N, C, 2.0f);
        float *hm = hf(N), *hr = hf(N);
        for (size_t n = 0; n < N; n++) { hm[n] = nrm(); hr[n] = 0.2f + 2.0f * (float)test_rand_unit(&g_rng); }
        dual mean = dnew(hm, N), rstd = dnew(hr, N), sl = slots_new(B, stride, 0, (size_t)C, boff, boff + C);
        CPU->pe_grad_layernorm(CPU, sl.c, sl.c + boff, stride, D.c, inp.c, mean.c, rstd.c, B, T, C);
        GPU->pe_grad_layernorm(GPU, sl.g, sl.g + boff, stride, D.g, inp.g, mean.g, rstd.g, B, T, C);
        snprintf(what, sizeof what, "pe_grad_layernorm B=%d T=%d C=%d", B, T, C);
        slots_check(what, sl, B, stride, 0, (size_t)C, boff, boff + C, 1e-6); /* both sum in double and round once */
        free(hm); free(hr);
        dfree(D); dfree(inp); dfree(mean); dfree(rstd); dfree(sl);

        /* pe_sum: the same formula (elementwise.h) without FMA on both: bitwise equal */
        size_t n = (size_t)rnd(1, 200000), xs = n + (size_t)rnd(0, 100);
        float *hs = hf(B);
        for (int b = 0; b < B; b++) hs[b] = b == 0 ? 1.0f : (float)test_rand_unit(&g_rng);
        dual X = drandn((size_t)B * xs, 2.0f), y = drandn(n, 1.0f), sc = dnew(hs, B);
        CPU->pe_sum(CPU, y.c, X.c, xs, sc.c, B, n);
        GPU->pe_sum(GPU, y.g, X.g, xs, sc.g, B, n);
        float *gy = hf(n), *cy = hf(n);
        snprintf(what, sizeof what, "pe_sum B=%d n=%zu stride=%zu", B, n, xs);
        dcheck_keep(what, y, 0.0, gy);
        CPU->download(CPU, cy, y.c, n * sizeof(float));
        cr_expect(memcmp(gy, cy, n * sizeof(float)) == 0, "%s: GPU differs from the CPU's bits (seed %llu)", what, SEED);
        free(hs); free(gy); free(cy);
        dfree(X); dfree(y); dfree(sc);
    }
}
