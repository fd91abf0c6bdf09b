/* test_cpu_pe_grads.c - the CPU backend's materialised per-example gradient
 * ops (pe_grad_linear, pe_grad_layernorm, pe_sum: ops.h, the per-example
 * DP method) against brute-force references in double, on fresh random
 * inputs and awkward shapes.
 *
 * Layout under test: example b's tensors start b * stride floats after the
 * output pointer, stride larger than what an example writes; the gap
 * between examples (and between a weight and its bias inside an example's
 * slot) holds guard words that must survive, so a wrong stride, a missing
 * example or a write past a tensor fails.
 *
 * Tolerance for the products: each output element is a dot product of
 * length T <= 70; fp32 accumulation errs by at most ~T 2^-24 of
 * S = sum_t |a_t| |d_t| (the same sum over absolute values), ~4e-6 S worst
 * case; we allow 1e-5 S. A wrong example, row or transposition is off by
 * O(1) of S. bf16: the reference rounds the operands to bf16 itself (an
 * independent frexp rounding), after which the products are exact in fp32,
 * so the same bound applies. Column sums accumulate in double and round
 * once: 1e-6 of their absolute sums. pe_sum is checked bit for bit against
 * its formula and within 1e-6 of the double sum. */
#include <criterion/criterion.h>
#include <string.h>
#include "ops.h"
#include "cpu/cpu_ops.h"
#include "test_util.h"

#include "ops_test_util.h"

/* a slot buffer of B examples `stride` floats apart, all GUARD_VAL */
static float *slots_new(int B, size_t stride) {
    float *h = hf((size_t)B * stride);
    for (size_t i = 0; i < (size_t)B * stride; i++) h[i] = GUARD_VAL;
    float *d = dnew(h, (size_t)B * stride);
    free(h);
    return d;
}

/* got[i] vs ref[i] within tol * S[i] (plus a denormal floor) */
static bool close_all(const char *what, const float *got, const double *ref, const double *S, size_t n, double tol) {
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]), allow = tol * S[i] + 1e-30;
        if (!(e <= allow)) {
            cr_expect(0, "%s: element %zu got %.9g want %.9g (|err| %.3g > %.3g) (seed %llu)", what, i, got[i], ref[i], e,
                      allow, SEED);
            return false;
        }
    }
    return true;
}

/* every float of slot b in [lo, hi) still a guard word */
static bool guards_kept(const char *what, const float *h, int B, size_t stride, size_t lo, size_t hi) {
    for (int b = 0; b < B; b++)
        for (size_t i = lo; i < hi; i++)
            if (h[(size_t)b * stride + i] != GUARD_VAL) {
                cr_expect(0, "%s: example %d wrote float %zu of its slot, outside its tensors (seed %llu)", what, b, i, SEED);
                return false;
            }
    return true;
}

static void linear_case(int B, int T, int C, int OC, nawal_wlayout layout, int bias, int bf16) {
    char what[160];
    snprintf(what, sizeof what, "pe_grad_linear%s B=%d T=%d C=%d OC=%d %s%s", bf16 ? " bf16" : "", B, T, C, OC,
             layout == NAWAL_W_IN_OUT ? "in_out" : "out_in", bias ? " +bias" : "");
    size_t N = (size_t)B * T, nw = (size_t)C * OC, gap = (size_t)rnd(1, 9), boff = nw + gap;
    size_t stride = boff + (size_t)OC + (size_t)rnd(1, 13);
    float *hin = hrandn(N * C, 1.0f), *hd_ = hrandn(N * OC, 0.5f);
    float *din = dnew(hin, N * C), *ddo = dnew(hd_, N * OC), *slots = slots_new(B, stride);
    O->pe_grad_linear(O, slots, bias ? slots + boff : NULL, stride, ddo, din, B, T, C, OC, layout);
    float *got = hf((size_t)B * stride);
    dget(got, slots, (size_t)B * stride);
    const float *ri = bf16 ? bf16_copy(hin, N * C) : hin, *rd = bf16 ? bf16_copy(hd_, N * OC) : hd_;
    double *ref = hd(nw), *S = hd(nw), *bref = hd(OC), *bS = hd(OC);
    float *gw = hf(nw), *gb = hf(OC);
    bool ok = true;
    for (int b = 0; b < B && ok; b++) {
        memset(ref, 0, nw * sizeof(double));
        memset(S, 0, nw * sizeof(double));
        memset(bref, 0, OC * sizeof(double));
        memset(bS, 0, OC * sizeof(double));
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            for (int c = 0; c < C; c++)
                for (int j = 0; j < OC; j++) {
                    double a = ri[r * C + c], d = rd[r * OC + j];
                    size_t k = layout == NAWAL_W_IN_OUT ? (size_t)c * OC + j : (size_t)j * C + c;
                    ref[k] += a * d;
                    S[k] += fabs(a * d);
                }
            for (int j = 0; j < OC; j++) { bref[j] += hd_[r * OC + j]; bS[j] += fabs(hd_[r * OC + j]); }
        }
        memcpy(gw, got + (size_t)b * stride, nw * sizeof(float));
        ok &= close_all(what, gw, ref, S, nw, 1e-5);
        if (bias) {
            memcpy(gb, got + (size_t)b * stride + boff, OC * sizeof(float));
            ok &= close_all(what, gb, bref, bS, OC, 1e-6);
        }
    }
    ok &= guards_kept(what, got, B, stride, nw, bias ? boff : stride);
    if (bias) guards_kept(what, got, B, stride, boff + OC, stride);
    if (bf16) { free((void *)ri); free((void *)rd); }
    free(hin); free(hd_); free(got); free(ref); free(S); free(bref); free(bS); free(gw); free(gb);
    ddone(din, N * C, what);
    ddone(ddo, N * OC, what);
    ddone(slots, (size_t)B * stride, what);
}

static void linear_cases(int bf16) {
    for (int r = 0; r < 6; r++)
        linear_case(rnd(1, 5), rnd(1, 70), rnd(1, 60), rnd(1, 80), r % 2 ? NAWAL_W_OUT_IN : NAWAL_W_IN_OUT, r % 3 != 2, bf16);
    linear_case(1, 1, 1, 1, NAWAL_W_IN_OUT, 1, bf16);
    linear_case(3, 17, 48, 257, NAWAL_W_OUT_IN, 0, bf16); /* an LM head: odd vocabulary */
}

Test(cpu_pe_grads, pe_grad_linear) {
    start("cpu_pe_grads/linear");
    linear_cases(0);
}

Test(cpu_pe_grads, pe_grad_linear_bf16) {
    start("cpu_pe_grads/linear_bf16");
    char err[256];
    if (O->set_precision(O, NAWAL_PREC_BF16, err, sizeof err)) TEST_SKIP_WITHOUT_BF16(err);
    linear_cases(1);
    cr_assert(O->set_precision(O, NAWAL_PREC_FP32, err, sizeof err) == 0, "%s", err);
}

Test(cpu_pe_grads, pe_grad_layernorm) {
    start("cpu_pe_grads/layernorm");
    for (int r = 0; r < 5; r++) {
        int B = rnd(1, 6), T = rnd(1, 70), C = r == 0 ? 1 : rnd(1, 300);
        size_t N = (size_t)B * T, boff = (size_t)C + (size_t)rnd(0, 5), stride = boff + (size_t)C + (size_t)rnd(1, 7);
        char what[128];
        snprintf(what, sizeof what, "pe_grad_layernorm B=%d T=%d C=%d", B, T, C);
        float *hd_ = hrandn(N * C, 1.0f), *hin = hf(N * C), *hm = hf(N), *hr = hf(N);
        for (size_t n = 0; n < N; n++) {
            hm[n] = 2.0f * nrm();
            hr[n] = (float)unif(0.2, 3.0);
            for (int c = 0; c < C; c++) hin[n * C + c] = hm[n] + (float)unif(-2.0, 2.0);
        }
        float *dd = dnew(hd_, N * C), *di = dnew(hin, N * C), *dm = dnew(hm, N), *dr = dnew(hr, N);
        float *slots = slots_new(B, stride);
        O->pe_grad_layernorm(O, slots, slots + boff, stride, dd, di, dm, dr, B, T, C);
        float *got = hf((size_t)B * stride), *g = hf(C);
        dget(got, slots, (size_t)B * stride);
        double *rw = hd(C), *rb = hd(C), *sw = hd(C), *sb = hd(C);
        bool ok = true;
        for (int b = 0; b < B && ok; b++) {
            memset(rw, 0, C * sizeof(double)); memset(rb, 0, C * sizeof(double));
            memset(sw, 0, C * sizeof(double)); memset(sb, 0, C * sizeof(double));
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t;
                for (int c = 0; c < C; c++) {
                    double d = hd_[n * C + c], xh = ((double)hin[n * C + c] - hm[n]) * hr[n];
                    rw[c] += d * xh; sw[c] += fabs(d * xh);
                    rb[c] += d; sb[c] += fabs(d);
                }
            }
            memcpy(g, got + (size_t)b * stride, C * sizeof(float));
            ok &= close_all(what, g, rw, sw, C, 1e-6);
            memcpy(g, got + (size_t)b * stride + boff, C * sizeof(float));
            ok &= close_all(what, g, rb, sb, C, 1e-6);
        }
        guards_kept(what, got, B, stride, C, boff);
        guards_kept(what, got, B, stride, boff + C, stride);
        free(hd_); free(hin); free(hm); free(hr); free(got); free(g); free(rw); free(rb); free(sw); free(sb);
        ddone(dd, N * C, what); ddone(di, N * C, what); ddone(dm, N, what); ddone(dr, N, what);
        ddone(slots, (size_t)B * stride, what);
    }
}

Test(cpu_pe_grads, pe_sum) {
    start("cpu_pe_grads/sum");
    for (int r = 0; r < 5; r++) {
        int B = rnd(1, 9);
        size_t n = r == 0 ? 1 : (size_t)rnd(1, 5000), stride = n + (size_t)rnd(0, 40);
        char what[96];
        snprintf(what, sizeof what, "pe_sum B=%d n=%zu stride=%zu", B, n, stride);
        float *hx = hf((size_t)B * stride), *hy = hrandn(n, 1.0f), *hs = hf(B), *got = hf(n);
        for (int b = 0; b < B; b++) {
            hs[b] = b == 0 ? 1.0f : b == 1 ? 0.0f : (float)unif(0.0, 1.0);
            /* the gaps are NaN: pe_sum must not read them */
            for (size_t i = 0; i < stride; i++) hx[(size_t)b * stride + i] = i < n ? 3.0f * nrm() : NAN;
        }
        float *dx = dnew(hx, (size_t)B * stride), *dy = dnew(hy, n), *ds = dnew(hs, B);
        O->pe_sum(O, dy, dx, stride, ds, B, n);
        dget(got, dy, n);
        bool ok = true;
        for (size_t i = 0; i < n && ok; i++) {
            float acc = 0.0f;
            double ref = 0.0, S = fabs(hy[i]);
            for (int b = 0; b < B; b++) {
                float x = hx[(size_t)b * stride + i];
                acc = acc + hs[b] * x;
                ref += (double)hs[b] * x;
                S += fabs((double)hs[b] * x);
            }
            float want = hy[i] + acc;
            ref += hy[i];
            ok &= memcmp(&want, &got[i], sizeof want) == 0 && fabs(got[i] - ref) <= 1e-6 * S;
            cr_expect(ok, "%s: element %zu got %.9g, formula %.9g, double %.9g (seed %llu)", what, i, got[i], want, ref,
                      SEED);
        }
        free(hx); free(hy); free(hs); free(got);
        ddone(dx, (size_t)B * stride, what); ddone(dy, n, what); ddone(ds, B, what);
    }
}
