/* test_cpu_ops.c - every op of the CPU backend (nawal_ops_cpu) against an
 * independent brute-force reference written here with plain loops in double
 * precision, on fresh random inputs (the seed is printed; replay a failure
 * with NAWAL_TEST_SEED) and awkward shapes (sizes that are not multiples of
 * 8/16/64, degenerate 1s, several random shapes per op). Outputs an op
 * overwrites are poisoned with NaN first, so a skipped element shows;
 * outputs documented as "+=" are pre-filled with random values and we check
 * that the op added to them. Every output buffer carries guard words after
 * its end that must survive. Also: nawal_expf against libm exp, the
 * Philox4x32-10 known-answer vectors of Random123, the moments of
 * nawal_philox_normal2, and a self-check of the test's own backward
 * references (layernorm, attention, GELU) against finite differences in
 * double.
 *
 * Tolerances. An fp32 op that sums K products commits one rounding of
 * relative size 2^-24 ~ 6e-8 per step; these errors behave like a random
 * walk, so the result is off by ~sqrt(K) * 6e-8 * (typical term), which for
 * K <= ~400 is <= ~1e-6 of the largest output. We allow 1e-5 of max|ref|:
 * ten times that, while any real bug (a missing term, a wrong transpose or
 * stride, a skipped row) is off by O(0.1..1) of max|ref|. Where the op is a
 * single correctly rounded fp32 operation (copy, fill, scale, residual add,
 * embedding forward) we demand bit equality with the double result rounded
 * to float. Where a bound is tighter or looser than 1e-5, the comment at
 * that check says why. */
#include <criterion/criterion.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>
#include "ops.h"
#include "elementwise.h"
#include "philox.h"
#include "test_util.h"

#include "ops_test_util.h"

#define TOL 1e-5
#define PI_D 3.14159265358979323846

/* ---- comparisons ---- */

static double maxabs(const double *r, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fabs(r[i]) > m ? fabs(r[i]) : m;
    return m;
}

/* |got_i - ref_i| <= bound_i for all i (NaN fails); reports the worst element */
static bool check_bound(const char *what, const float *got, const double *ref, const double *bound, size_t n) {
    double worst = 0.0;
    size_t wi = 0;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= bound[i])) {
            double r = isnan(e) ? INFINITY : e / bound[i];
            if (ok || r > worst) { worst = r; wi = i; }
            ok = false;
        }
    }
    cr_expect(ok, "%s: element %zu is %.9g, reference %.9g (error %.3g > bound %.3g, %.3gx) (seed %llu)", what, wi,
              n ? got[wi] : 0.0, n ? ref[wi] : 0.0, n ? fabs(got[wi] - ref[wi]) : 0.0, n ? bound[wi] : 0.0, worst, SEED);
    return ok;
}

/* max_i |got_i - ref_i| <= tol * max_i |ref_i| (absolute tol when ref is all zero) */
static bool check_rel(const char *what, const float *got, const double *ref, size_t n, double tol) {
    double s = maxabs(ref, n), *b = hd(n);
    for (size_t i = 0; i < n; i++) b[i] = tol * (s > 0.0 ? s : 1.0);
    bool ok = check_bound(what, got, ref, b, n);
    free(b);
    return ok;
}

/* an accumulating output: got == pre + add, to tol * s (s = max|add| in
 * check_acc) plus the final fp32 rounding of the sum (2^-23 |pre + add|, one ulp) */
static bool check_acc_scaled(const char *what, const float *got, const float *pre, const double *add, size_t n,
                             double tol, double s) {
    double *want = hd(n), *b = hd(n);
    for (size_t i = 0; i < n; i++) {
        want[i] = (double)pre[i] + add[i];
        b[i] = tol * (s > 0.0 ? s : 1.0) + 0x1p-23 * fabs(want[i]);
    }
    bool ok = check_bound(what, got, want, b, n);
    free(want);
    free(b);
    return ok;
}
static bool check_acc(const char *what, const float *got, const float *pre, const double *add, size_t n, double tol) {
    return check_acc_scaled(what, got, pre, add, n, tol, maxabs(add, n));
}

/* bit-for-bit (as values: -0 == +0) equality with the double reference rounded to float */
static bool check_exact(const char *what, const float *got, const double *ref, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == (float)ref[i])) {
            cr_expect(0, "%s: element %zu is %.9g, want exactly %.9g (seed %llu)", what, i, got[i], (float)ref[i], SEED);
            return false;
        }
    return true;
}

/* ======================================================================
 * double-precision references
 * ====================================================================== */

/* logical weight W(c, o) stored in either layout */
static size_t widx(int c, int o, int C, int OC, nawal_wlayout l) {
    return l == NAWAL_W_IN_OUT ? (size_t)c * OC + o : (size_t)o * C + c;
}

static void ref_layernorm_fwd(double *out, double *mean, double *rstd, const double *x, const double *w,
                              const double *b, int N, int C) {
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * C;
        double m = 0.0, v = 0.0;
        for (int i = 0; i < C; i++) m += xr[i];
        m /= C;
        for (int i = 0; i < C; i++) v += (xr[i] - m) * (xr[i] - m);
        v /= C;
        double s = 1.0 / sqrt(v + 1e-5);
        for (int i = 0; i < C; i++) out[(size_t)n * C + i] = (xr[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

/* contributions only (dx, dw, db zeroed here). With y = xh w + b,
 * xh = (x - m) s, s = (var + eps)^-1/2, differentiating m and s through x:
 * dx_i = s (g_i - mean(g) - xh_i mean(g xh)), g = dy w. */
static void ref_layernorm_bwd(double *dx, double *dw, double *db, const double *dy, const double *x,
                              const double *w, const double *mean, const double *rstd, int N, int C) {
    memset(dw, 0, (size_t)C * sizeof(double));
    memset(db, 0, (size_t)C * sizeof(double));
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * C, *g = dy + (size_t)n * C;
        double m = mean[n], s = rstd[n], mg = 0.0, mgx = 0.0;
        for (int i = 0; i < C; i++) {
            double xh = (xr[i] - m) * s;
            mg += g[i] * w[i];
            mgx += g[i] * w[i] * xh;
            dw[i] += g[i] * xh;
            db[i] += g[i];
        }
        mg /= C;
        mgx /= C;
        for (int i = 0; i < C; i++) {
            double xh = (xr[i] - m) * s;
            dx[(size_t)n * C + i] = s * (g[i] * w[i] - mg - xh * mgx);
        }
    }
}

static void ref_attention_fwd(double *out, double *att, const double *qkv, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    double sc = 1.0 / sqrt((double)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                double *a = att + (((size_t)b * NH + h) * T + t) * T;
                double mx = -INFINITY, sum = 0.0;
                for (int u = 0; u < T; u++) {
                    a[u] = 0.0;
                    if (u > t) continue;
                    const double *k = qkv + ((size_t)b * T + u) * C3 + C + h * hs;
                    double d = 0.0;
                    for (int i = 0; i < hs; i++) d += q[i] * k[i];
                    a[u] = d * sc;
                    mx = a[u] > mx ? a[u] : mx;
                }
                for (int u = 0; u <= t; u++) { a[u] = exp(a[u] - mx); sum += a[u]; }
                for (int u = 0; u <= t; u++) a[u] /= sum;
                double *y = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) {
                    double acc = 0.0;
                    for (int u = 0; u <= t; u++) acc += a[u] * qkv[((size_t)b * T + u) * C3 + 2 * C + h * hs + i];
                    y[i] = acc;
                }
            }
}

/* out_t = sum_u a_tu v_u, a_t = softmax(s_t), s_tu = sc q_t.k_u (u <= t):
 * dv_u += a_tu dy_t; da_tu = dy_t.v_u; ds_tu = a_tu (da_tu - sum_u' a_tu' da_tu');
 * dq_t += sc ds_tu k_u; dk_u += sc ds_tu q_t. */
static void ref_attention_bwd(double *dqkv, const double *dout, const double *qkv, const double *att,
                              int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    double sc = 1.0 / sqrt((double)hs);
    double *da = hd((size_t)T);
    memset(dqkv, 0, (size_t)B * T * C3 * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *a = att + (((size_t)b * NH + h) * T + t) * T;
                const double *dy = dout + ((size_t)b * T + t) * C + h * hs;
                const double *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                double dot = 0.0;
                for (int u = 0; u <= t; u++) {
                    const double *v = qkv + ((size_t)b * T + u) * C3 + 2 * C + h * hs;
                    double *dv = dqkv + ((size_t)b * T + u) * C3 + 2 * C + h * hs;
                    da[u] = 0.0;
                    for (int i = 0; i < hs; i++) { da[u] += dy[i] * v[i]; dv[i] += a[u] * dy[i]; }
                    dot += a[u] * da[u];
                }
                for (int u = 0; u <= t; u++) {
                    double ds = a[u] * (da[u] - dot) * sc;
                    const double *k = qkv + ((size_t)b * T + u) * C3 + C + h * hs;
                    double *dq = dqkv + ((size_t)b * T + t) * C3 + h * hs;
                    double *dk = dqkv + ((size_t)b * T + u) * C3 + C + h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += ds * k[i]; dk[i] += ds * q[i]; }
                }
            }
    free(da);
}

static double ref_gelu(double x) {
    double k = sqrt(2.0 / PI_D);
    return 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
}
static double ref_gelu_grad(double x) {
    double k = sqrt(2.0 / PI_D), th = tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

static double *to_d(const float *f, size_t n) {
    double *d = hd(n);
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

/* ======================================================================
 * the references themselves against finite differences (double)
 * ====================================================================== */

Test(cpu_ops, references_match_finite_differences) {
    start("cpu_ops/ref_selfcheck");
    const double h = 1e-5; /* central difference: truncation ~h^2, rounding ~1e-16/h: both ~1e-10 */
    /* layernorm: L = sum(out * R) over (x, w, b) */
    {
        int N = 3, C = 7;
        size_t n = (size_t)N * C;
        double *x = hd(n), *w = hd(C), *b = hd(C), *R = hd(n), *out = hd(n), *mean = hd(N), *rstd = hd(N);
        double *dx = hd(n), *dw = hd(C), *db = hd(C);
        for (size_t i = 0; i < n; i++) { x[i] = 1.0 + nrm(); R[i] = nrm(); }
        for (int i = 0; i < C; i++) { w[i] = 1.0 + 0.3 * nrm(); b[i] = 0.3 * nrm(); }
        ref_layernorm_fwd(out, mean, rstd, x, w, b, N, C);
        ref_layernorm_bwd(dx, dw, db, R, x, w, mean, rstd, N, C);
        double *params[3] = { x, w, b }, *grads[3] = { dx, dw, db };
        size_t sizes[3] = { n, (size_t)C, (size_t)C };
        for (int p = 0; p < 3; p++)
            for (size_t i = 0; i < sizes[p]; i++) {
                double save = params[p][i], L[2];
                for (int s = 0; s < 2; s++) {
                    params[p][i] = save + (s ? -h : h);
                    ref_layernorm_fwd(out, mean, rstd, x, w, b, N, C);
                    L[s] = 0.0;
                    for (size_t j = 0; j < n; j++) L[s] += out[j] * R[j];
                }
                params[p][i] = save;
                double fd = (L[0] - L[1]) / (2 * h);
                cr_expect(fabs(fd - grads[p][i]) <= 1e-6 * (1.0 + fabs(fd)),
                          "layernorm reference grad %d[%zu] %.9g vs FD %.9g (seed %llu)", p, i, grads[p][i], fd, SEED);
            }
        free(x); free(w); free(b); free(R); free(out); free(mean); free(rstd); free(dx); free(dw); free(db);
    }
    /* attention: L = sum(out * R) over qkv */
    {
        int B = 2, T = 5, C = 6, NH = 2;
        size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
        double *qkv = hd(nq), *R = hd(no), *out = hd(no), *att = hd(na), *dq = hd(nq);
        for (size_t i = 0; i < nq; i++) qkv[i] = nrm();
        for (size_t i = 0; i < no; i++) R[i] = nrm();
        ref_attention_fwd(out, att, qkv, B, T, C, NH);
        ref_attention_bwd(dq, R, qkv, att, B, T, C, NH);
        for (size_t i = 0; i < nq; i++) {
            double save = qkv[i], L[2];
            for (int s = 0; s < 2; s++) {
                qkv[i] = save + (s ? -h : h);
                ref_attention_fwd(out, att, qkv, B, T, C, NH);
                L[s] = 0.0;
                for (size_t j = 0; j < no; j++) L[s] += out[j] * R[j];
            }
            qkv[i] = save;
            double fd = (L[0] - L[1]) / (2 * h);
            cr_expect(fabs(fd - dq[i]) <= 1e-6 * (1.0 + fabs(fd)), "attention reference dqkv[%zu] %.9g vs FD %.9g (seed %llu)",
                      i, dq[i], fd, SEED);
        }
        free(qkv); free(R); free(out); free(att); free(dq);
    }
    /* GELU derivative formula */
    for (int i = 0; i <= 400; i++) {
        double x = -10.0 + 0.05 * i, fd = (ref_gelu(x + h) - ref_gelu(x - h)) / (2 * h);
        cr_expect(fabs(fd - ref_gelu_grad(x)) <= 1e-8, "gelu' reference at %g: %.12g vs FD %.12g", x, ref_gelu_grad(x), fd);
    }
}

/* ======================================================================
 * matmul
 * ====================================================================== */

/* The three products against double references. bf16: the references use
 * operands rounded to bf16 (ref_bf16); the products of two bf16 values are
 * exact in fp32 and accumulate in fp32, so the fp32 tolerance applies, while
 * an op that skipped the rounding (or truncated) is ~2^-9 off. Biases and
 * the "+=" targets are never rounded. */
static void matmul_case(nawal_precision prec) {
    char perr[200];
    if (O->set_precision(O, prec, perr, sizeof perr) != 0) {
        cr_assert(prec == NAWAL_PREC_BF16, "%s", perr);
        TEST_SKIP_WITHOUT_BF16(perr);
        return;
    }
    int bf = prec == NAWAL_PREC_BF16;
    int shapes[10][3] = { { 37, 29, 53 }, { 1, 1, 1 }, { 1, 67, 131 }, { 13, 3, 1 }, { 64, 65, 63 }, { 129, 257, 383 } };
    for (int s = 6; s < 10; s++) { shapes[s][0] = rnd(1, 100); shapes[s][1] = rnd(1, 300); shapes[s][2] = rnd(1, 300); }
    for (int s = 0; s < 10; s++) {
        int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        size_t nin = (size_t)N * C, nw = (size_t)C * OC, nout = (size_t)N * OC;
        float *inp = hrandn(nin, 1.0f), *wl = hrandn(nw, 0.5f), *bias = hrandn(OC, 1.0f), *dout = hrandn(nout, 1.0f);
        /* the operands the products see */
        float *ri = bf ? bf16_copy(inp, nin) : inp, *rw = bf ? bf16_copy(wl, nw) : wl, *rd = bf ? bf16_copy(dout, nout) : dout;
        /* logical W(c,o) = wl[c*OC+o]; references in double */
        double *out = hd(nout), *dinp = hd(nin), *dwl = hd(nw), *dbias = hd(OC);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double acc = 0.0;
                for (int c = 0; c < C; c++) acc += (double)ri[(size_t)n * C + c] * rw[(size_t)c * OC + o];
                out[(size_t)n * OC + o] = acc;
            }
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int o = 0; o < OC; o++) acc += (double)rd[(size_t)n * OC + o] * rw[(size_t)c * OC + o];
                dinp[(size_t)n * C + c] = acc;
            }
        for (int c = 0; c < C; c++)
            for (int o = 0; o < OC; o++) {
                double acc = 0.0;
                for (int n = 0; n < N; n++) acc += (double)ri[(size_t)n * C + c] * rd[(size_t)n * OC + o];
                dwl[(size_t)c * OC + o] = acc;
            }
        if (bf) { free(ri); free(rw); free(rd); }
        for (int o = 0; o < OC; o++)
            for (int n = 0; n < N; n++) dbias[o] += dout[(size_t)n * OC + o];
        /* the bias sums' tolerance scale: sum of |terms|, not |sum| (a sum
         * that cancels to near zero still carries the terms' rounding) */
        double dbias_abs = 0.0;
        for (int o = 0; o < OC; o++) {
            double a = 0.0;
            for (int n = 0; n < N; n++) a += fabs((double)dout[(size_t)n * OC + o]);
            dbias_abs = a > dbias_abs ? a : dbias_abs;
        }
        double *outb = hd(nout);
        for (size_t i = 0; i < nout; i++) outb[i] = out[i] + bias[i % OC];

        for (int l = 0; l < 2; l++) {
            nawal_wlayout lay = l ? NAWAL_W_OUT_IN : NAWAL_W_IN_OUT;
            float *w = hf(nw);
            double *dwref = hd(nw);
            for (int c = 0; c < C; c++)
                for (int o = 0; o < OC; o++) {
                    w[widx(c, o, C, OC, lay)] = wl[(size_t)c * OC + o];
                    dwref[widx(c, o, C, OC, lay)] = dwl[(size_t)c * OC + o];
                }
            float *d_inp = dnew(inp, nin), *d_w = dnew(w, nw), *d_b = dnew(bias, OC), *d_dout = dnew(dout, nout);
            float *got = hf(nout > nin ? (nout > nw ? nout : nw) : (nin > nw ? nin : nw));
            char what[160];
            for (int wb = 0; wb < 2; wb++) {
                float *d_out = dnew(NULL, nout);
                O->matmul_fwd(O, d_out, d_inp, d_w, wb ? d_b : NULL, N, C, OC, lay);
                dget(got, d_out, nout);
                snprintf(what, sizeof what, "%s matmul_fwd N=%d C=%d OC=%d layout=%s bias=%d", nawal_precision_name(prec), N,
                         C, OC, l ? "OUT_IN" : "IN_OUT", wb);
                check_rel(what, got, wb ? outb : out, nout, TOL);
                ddone(d_out, nout, what);
            }
            for (int wi = 0; wi < 2; wi++)
                for (int wb = 0; wb < 2; wb++) {
                    float *dw_pre = hrandn(nw, 1.0f), *db_pre = hrandn(OC, 1.0f);
                    float *d_dinp = wi ? dnew(NULL, nin) : NULL, *d_dw = dnew(dw_pre, nw), *d_db = wb ? dnew(db_pre, OC) : NULL;
                    O->matmul_bwd(O, d_dinp, d_dw, d_db, d_dout, d_inp, d_w, N, C, OC, lay);
                    snprintf(what, sizeof what, "%s matmul_bwd N=%d C=%d OC=%d layout=%s dinp=%d dbias=%d",
                             nawal_precision_name(prec), N, C, OC, l ? "OUT_IN" : "IN_OUT", wi, wb);
                    char w2[200];
                    if (wi) {
                        dget(got, d_dinp, nin);
                        snprintf(w2, sizeof w2, "%s: dinp", what);
                        check_rel(w2, got, dinp, nin, TOL);
                        ddone(d_dinp, nin, w2);
                    }
                    dget(got, d_dw, nw);
                    snprintf(w2, sizeof w2, "%s: dw (+=)", what);
                    check_acc(w2, got, dw_pre, dwref, nw, TOL);
                    ddone(d_dw, nw, w2);
                    if (wb) {
                        dget(got, d_db, OC);
                        snprintf(w2, sizeof w2, "%s: dbias (+=)", what);
                        check_acc_scaled(w2, got, db_pre, dbias, OC, TOL, dbias_abs);
                        ddone(d_db, OC, w2);
                    }
                    free(dw_pre);
                    free(db_pre);
                }
            O->free(O, d_inp); O->free(O, d_w); O->free(O, d_b); O->free(O, d_dout);
            free(w); free(dwref); free(got);
        }
        free(inp); free(wl); free(bias); free(dout); free(out); free(outb); free(dinp); free(dwl); free(dbias);
    }
    cr_assert(O->set_precision(O, NAWAL_PREC_FP32, perr, sizeof perr) == 0, "%s", perr);
}

Test(cpu_ops, matmul_fwd_bwd) {
    start("cpu_ops/matmul");
    matmul_case(NAWAL_PREC_FP32);
}

Test(cpu_ops, matmul_bf16) {
    start("cpu_ops/matmul_bf16");
    matmul_case(NAWAL_PREC_BF16);
}

/* the CPU refuses tf32 (no such arithmetic) with a message, and keeps fp32 */
Test(cpu_ops, precision_refused) {
    start("cpu_ops/precision");
    char perr[200] = "";
    cr_expect(O->set_precision(O, NAWAL_PREC_TF32, perr, sizeof perr) == -1);
    cr_expect(strstr(perr, "tf32") != NULL, "message: %s", perr);
    cr_expect(O->get_precision(O) == NAWAL_PREC_FP32);
}

/* ======================================================================
 * layernorm
 * ====================================================================== */

Test(cpu_ops, layernorm_fwd_bwd) {
    start("cpu_ops/layernorm");
    int shapes[10][2] = { { 37, 29 }, { 1, 1 }, { 13, 21 }, { 5, 767 }, { 3, 130 }, { 2, 64 } };
    for (int s = 6; s < 10; s++) { shapes[s][0] = rnd(1, 60); shapes[s][1] = rnd(2, 300); }
    for (int s = 0; s < 10; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t n = (size_t)N * C;
        /* rows with their own offset and spread, so the mean subtraction
         * matters. An fp32 mean of C inputs at offset |m| is off by ~sqrt(C)
         * ulp(C |m|) / C ~ sqrt(C) u |m|, i.e. sqrt(C) u |m| / std in the
         * normalised output: offsets stay within 10 std (C = 767: ~3e-6) */
        float *x = hf(n), *w = hf(C), *b = hf(C), *dy = hrandn(n, 1.0f);
        double xmax = 0.0;
        for (int r = 0; r < N; r++) {
            double off = unif(-3, 3), sp = unif(0.3, 3);
            for (int i = 0; i < C; i++) {
                x[(size_t)r * C + i] = (float)(off + sp * nrm());
                xmax = fmax(xmax, fabs(x[(size_t)r * C + i]));
            }
        }
        for (int i = 0; i < C; i++) { w[i] = 1.0f + 0.3f * nrm(); b[i] = 0.3f * nrm(); }
        double *xd = to_d(x, n), *wd = to_d(w, C), *bd = to_d(b, C), *dyd = to_d(dy, n);
        double *out = hd(n), *mean = hd(N), *rstd = hd(N);
        ref_layernorm_fwd(out, mean, rstd, xd, wd, bd, N, C);
        char what[128], w2[160];
        snprintf(what, sizeof what, "layernorm N=%d C=%d", N, C);

        float *d_x = dnew(x, n), *d_w = dnew(w, C), *d_b = dnew(b, C), *d_out = dnew(NULL, n);
        float *d_mean = dnew(NULL, N), *d_rstd = dnew(NULL, N), *got = hf(n);
        O->layernorm_fwd(O, d_out, d_mean, d_rstd, d_x, d_w, d_b, N, C);
        dget(got, d_out, n);
        snprintf(w2, sizeof w2, "%s: out", what);
        check_rel(w2, got, out, n, TOL);
        ddone(d_out, n, w2);
        /* the mean of fp32 inputs carries ~sqrt(C) eps |x| of rounding: bound
         * it relative to the inputs' size, not the (possibly ~0) means */
        double *b_mean = hd(N), *b_rstd = hd(N);
        for (int r = 0; r < N; r++) { b_mean[r] = TOL * xmax; b_rstd[r] = TOL * rstd[r]; }
        dget(got, d_mean, N);
        snprintf(w2, sizeof w2, "%s: mean", what);
        check_bound(w2, got, mean, b_mean, N);
        ddone(d_mean, N, w2);
        dget(got, d_rstd, N);
        snprintf(w2, sizeof w2, "%s: rstd", what);
        check_bound(w2, got, rstd, b_rstd, N);
        ddone(d_rstd, N, w2);

        /* backward from the fp32-rounded saved statistics, as the model passes them */
        float *mf = hf(N), *rf = hf(N);
        for (int r = 0; r < N; r++) { mf[r] = (float)mean[r]; rf[r] = (float)rstd[r]; }
        double *mfd = to_d(mf, N), *rfd = to_d(rf, N), *dx = hd(n), *dw = hd(C), *db = hd(C);
        ref_layernorm_bwd(dx, dw, db, dyd, xd, wd, mfd, rfd, N, C);
        float *dx_pre = hrandn(n, 1.0f), *dw_pre = hrandn(C, 1.0f), *db_pre = hrandn(C, 1.0f);
        float *d_dy = dnew(dy, n), *d_mf = dnew(mf, N), *d_rf = dnew(rf, N);
        float *d_dx = dnew(dx_pre, n), *d_dw = dnew(dw_pre, C), *d_db = dnew(db_pre, C);
        O->layernorm_bwd(O, d_dx, d_dw, d_db, d_dy, d_x, d_w, d_mf, d_rf, N, C);
        dget(got, d_dx, n);
        snprintf(w2, sizeof w2, "%s: dinp (+=)", what);
        /* dinp is a difference of terms s (g_i - mean(g) - xh_i mean(g xh)),
         * g = dy w, that nearly cancel when C is small (C = 2: xh = +-1 and
         * the true gradient is O(eps / var)); its rounding error scales with
         * the terms, so the tolerance is relative to the largest of them */
        double terms = 0.0;
        for (int r = 0; r < N; r++) {
            double mg = 0.0, mgx = 0.0, sr = rfd[r];
            for (int i = 0; i < C; i++) {
                size_t k = (size_t)r * C + i;
                mg += dyd[k] * wd[i];
                mgx += dyd[k] * wd[i] * (xd[k] - mfd[r]) * sr;
            }
            mg /= C;
            mgx /= C;
            for (int i = 0; i < C; i++) {
                size_t k = (size_t)r * C + i;
                terms = fmax(terms, sr * (fabs(dyd[k] * wd[i]) + fabs(mg) + fabs((xd[k] - mfd[r]) * sr * mgx)));
            }
        }
        check_acc_scaled(w2, got, dx_pre, dx, n, TOL, terms);
        ddone(d_dx, n, w2);
        dget(got, d_dw, C);
        snprintf(w2, sizeof w2, "%s: dw (+=)", what);
        check_acc(w2, got, dw_pre, dw, C, TOL);
        ddone(d_dw, C, w2);
        dget(got, d_db, C);
        snprintf(w2, sizeof w2, "%s: db (+=)", what);
        check_acc(w2, got, db_pre, db, C, TOL);
        ddone(d_db, C, w2);

        O->free(O, d_x); O->free(O, d_w); O->free(O, d_b); O->free(O, d_dy); O->free(O, d_mf); O->free(O, d_rf);
        free(x); free(w); free(b); free(dy); free(xd); free(wd); free(bd); free(dyd); free(out); free(mean); free(rstd);
        free(got); free(b_mean); free(b_rstd); free(mf); free(rf); free(mfd); free(rfd); free(dx); free(dw); free(db);
        free(dx_pre); free(dw_pre); free(db_pre);
    }
}

/* ======================================================================
 * attention
 * ====================================================================== */

Test(cpu_ops, attention_fwd_bwd) {
    start("cpu_ops/attention");
    int shapes[10][4] = { { 2, 13, 21, 3 }, { 1, 1, 8, 2 }, { 3, 37, 29, 1 }, { 1, 67, 24, 4 }, { 2, 5, 3, 3 }, { 1, 70, 130, 2 } };
    for (int s = 6; s < 10; s++) {
        int NH = rnd(1, 4), hs = rnd(1, 20);
        shapes[s][0] = rnd(1, 3); shapes[s][1] = rnd(1, 40); shapes[s][2] = NH * hs; shapes[s][3] = NH;
    }
    for (int s = 0; s < 10; s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], NH = shapes[s][3];
        size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
        /* scale 1.5: attention scores of O(2), so the softmax is far from uniform */
        float *qkv = hrandn(nq, 1.5f), *dout = hrandn(no, 1.0f);
        double *qd = to_d(qkv, nq), *dod = to_d(dout, no), *out = hd(no), *att = hd(na), *dq = hd(nq);
        ref_attention_fwd(out, att, qd, B, T, C, NH);
        char what[128], w2[160];
        snprintf(what, sizeof what, "attention B=%d T=%d C=%d NH=%d", B, T, C, NH);

        float *d_qkv = dnew(qkv, nq), *d_out = dnew(NULL, no), *d_att = dnew(NULL, na);
        float *got = hf(nq > na ? nq : na);
        O->attention_fwd(O, d_out, d_att, d_qkv, B, T, C, NH);
        dget(got, d_out, no);
        snprintf(w2, sizeof w2, "%s: out", what);
        check_rel(w2, got, out, no, TOL);
        ddone(d_out, no, w2);
        dget(got, d_att, na);
        snprintf(w2, sizeof w2, "%s: att", what);
        check_rel(w2, got, att, na, TOL);
        for (int bh = 0; bh < B * NH; bh++)
            for (int t = 0; t < T; t++)
                for (int u = t + 1; u < T; u++)
                    if (got[((size_t)bh * T + t) * T + u] != 0.0f) {
                        cr_expect(0, "%s: att[%d][%d][%d] above the diagonal is %g, not 0 (seed %llu)", what, bh, t, u,
                                  got[((size_t)bh * T + t) * T + u], SEED);
                        bh = B * NH; t = T; break;
                    }
        ddone(d_att, na, w2);

        /* backward from the fp32-rounded probabilities, as the op receives them */
        float *af = hf(na);
        for (size_t i = 0; i < na; i++) af[i] = (float)att[i];
        double *afd = to_d(af, na);
        ref_attention_bwd(dq, dod, qd, afd, B, T, C, NH);
        float *d_af = dnew(af, na), *d_dout = dnew(dout, no), *d_dq = dnew(NULL, nq), *d_datt = dnew(NULL, na);
        O->attention_bwd(O, d_dq, d_datt, d_dout, d_qkv, d_af, B, T, C, NH);
        dget(got, d_dq, nq);
        snprintf(w2, sizeof w2, "%s: dqkv", what);
        check_rel(w2, got, dq, nq, TOL);
        ddone(d_dq, nq, w2);
        snprintf(w2, sizeof w2, "%s: datt (scratch)", what);
        ddone(d_datt, na, w2);

        O->free(O, d_qkv); O->free(O, d_af); O->free(O, d_dout);
        free(qkv); free(dout); free(qd); free(dod); free(out); free(att); free(dq); free(got); free(af); free(afd);
    }
}

/* ======================================================================
 * GELU, residual
 * ====================================================================== */

/* inputs: a uniform sweep of [-10, 10], random normals of scale 3, and the extremes */
static float *gelu_inputs(size_t *n_out) {
    static const float extremes[] = { 0.0f, -0.0f, 30.0f, -30.0f, 20.0f, -20.0f, 10.0f, -10.0f, 1e-30f, -1e-30f, 1e-3f, -1e-3f, 88.0f, -88.0f };
    size_t ne = sizeof extremes / sizeof extremes[0], ns = 4001, nr = 1013, n = ne + ns + nr;
    float *x = hf(n);
    for (size_t i = 0; i < ne; i++) x[i] = extremes[i];
    for (size_t i = 0; i < ns; i++) x[ne + i] = (float)(-10.0 + 20.0 * (double)i / (double)(ns - 1));
    for (size_t i = 0; i < nr; i++) x[ne + ns + i] = 3.0f * nrm();
    *n_out = n;
    return x;
}

Test(cpu_ops, gelu_fwd_bwd) {
    start("cpu_ops/gelu");
    size_t n;
    float *x = gelu_inputs(&n), *dy = hrandn(n, 1.0f), *got = hf(n);
    double *ref = hd(n), *bnd = hd(n), *gref = hd(n), *gb = hd(n);
    /* forward in fp32: nawal_tanhf has ~1e-7 absolute error, scaled by
     * 0.5|x|, plus a few roundings of the result; so per element
     * |err| <= 1e-6 (1 + |x|): ~1e-6 relative where gelu(x) ~ x, and a
     * tight absolute bound on the tiny negative tail.
     * Derivative: sech^2 = 1 - th^2 carries ~2e-7 absolute error, times
     * 0.5|x| k (1 + 0.134 x^2), which matters for |x| of a few units where
     * sech^2 is not yet negligible: |err| <= 2e-6 |dy| (1 + |x|). */
    for (size_t i = 0; i < n; i++) {
        ref[i] = ref_gelu(x[i]);
        bnd[i] = 1e-6 * (1.0 + fabs(x[i]));
        gref[i] = ref_gelu_grad(x[i]) * dy[i];
        gb[i] = 2e-6 * fabs(dy[i]) * (1.0 + fabs(x[i])) + 1e-30;
    }
    /* the full set, and short lengths whose per-thread ranges (blocks of 64)
     * are empty, partial, or end exactly at n (128 for 2 threads, 192 for 3) */
    size_t lens[] = { n, 1, 7, 63, 65, 128, 129, 192 };
    int threads[3] = { 1, 2, 3 }, saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 8; j++) {
            size_t m = lens[j];
            omp_set_num_threads(threads[k]);
            char what[96];
            float *d_x = dnew(x, m), *d_out = dnew(NULL, m), *d_dy = dnew(dy, m), *d_dx = dnew(NULL, m);
            O->gelu_fwd(O, d_out, d_x, m);
            dget(got, d_out, m);
            snprintf(what, sizeof what, "gelu_fwd n=%zu threads=%d", m, threads[k]);
            check_bound(what, got, ref, bnd, m);
            ddone(d_out, m, what);
            O->gelu_bwd(O, d_dx, d_x, d_dy, m);
            dget(got, d_dx, m);
            snprintf(what, sizeof what, "gelu_bwd n=%zu threads=%d", m, threads[k]);
            check_bound(what, got, gref, gb, m);
            ddone(d_dx, m, what);
            /* documented aliasing: dinp == dout */
            O->gelu_bwd(O, d_dy, d_x, d_dy, m);
            dget(got, d_dy, m);
            snprintf(what, sizeof what, "gelu_bwd in place (dinp == dout) n=%zu threads=%d", m, threads[k]);
            check_bound(what, got, gref, gb, m);
            ddone(d_dy, m, what);
            O->free(O, d_x);
        }
    omp_set_num_threads(saved);
    free(x); free(dy); free(got); free(ref); free(bnd); free(gref); free(gb);
}

/* ======================================================================
 * vector basics: fill, copy, axpy, scale, residual add
 * ====================================================================== */

Test(cpu_ops, fill_copy_axpy_scale_residual) {
    start("cpu_ops/vector");
    /* lengths whose per-thread ranges (blocks of 64) are empty, partial, or
     * end exactly at n (128 for 2 threads, 192 for 3) */
    static const size_t lens[] = { 0, 1, 7, 63, 64, 65, 128, 192, 1003, 100003 };
    int threads[3] = { 1, 2, 3 }, saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 10; j++) {
            size_t m = lens[j];
            omp_set_num_threads(threads[k]);
            float *a = hrandn(m, 1.0f), *b = hrandn(m, 2.0f), *got = hf(m);
            double *ref = hd(m), *bnd = hd(m);
            float v = nrm(), alpha = nrm();
            char what[96];
            float *d_a = dnew(a, m), *d_b = dnew(b, m);

            float *d = dnew(NULL, m);
            O->fill(O, d, v, m);
            dget(got, d, m);
            for (size_t i = 0; i < m; i++) ref[i] = v;
            snprintf(what, sizeof what, "fill n=%zu threads=%d", m, threads[k]);
            check_exact(what, got, ref, m);
            ddone(d, m, what);

            d = dnew(NULL, m);
            O->copy(O, d, d_a, m);
            dget(got, d, m);
            for (size_t i = 0; i < m; i++) ref[i] = a[i];
            snprintf(what, sizeof what, "copy n=%zu threads=%d", m, threads[k]);
            check_exact(what, got, ref, m);
            ddone(d, m, what);

            /* y + a x: one or two fp32 roundings (with or without FMA), each
             * <= 2^-24 of |y| + |a x|; we allow four */
            d = dnew(b, m);
            O->axpy(O, d, alpha, d_a, m);
            dget(got, d, m);
            for (size_t i = 0; i < m; i++) {
                ref[i] = (double)b[i] + (double)alpha * a[i];
                bnd[i] = 0x1p-22 * (fabs(b[i]) + fabs((double)alpha * a[i]));
            }
            snprintf(what, sizeof what, "axpy n=%zu threads=%d", m, threads[k]);
            check_bound(what, got, ref, bnd, m);
            ddone(d, m, what);

            /* x * a and a + b are single correctly rounded fp32 operations */
            d = dnew(a, m);
            O->scale(O, d, alpha, m);
            dget(got, d, m);
            for (size_t i = 0; i < m; i++) ref[i] = (double)alpha * a[i];
            snprintf(what, sizeof what, "scale n=%zu threads=%d", m, threads[k]);
            check_exact(what, got, ref, m);
            ddone(d, m, what);

            d = dnew(NULL, m);
            O->residual_fwd(O, d, d_a, d_b, m);
            dget(got, d, m);
            for (size_t i = 0; i < m; i++) ref[i] = (double)a[i] + b[i];
            snprintf(what, sizeof what, "residual_fwd n=%zu threads=%d", m, threads[k]);
            check_exact(what, got, ref, m);
            ddone(d, m, what);

            O->free(O, d_a); O->free(O, d_b);
            free(a); free(b); free(got); free(ref); free(bnd);
        }
    omp_set_num_threads(saved);
}

/* ======================================================================
 * sumsq
 * ====================================================================== */

Test(cpu_ops, sumsq) {
    start("cpu_ops/sumsq");
    static const size_t lens[] = { 0, 1, 37, 4095, 4096, 4097, 100003, 300007 };
    for (int j = 0; j < 8; j++) {
        size_t m = lens[j];
        float *x = hf(m);
        for (size_t i = 0; i < m; i++) x[i] = nrm() * (float)pow(10.0, unif(-3, 3));
        /* float * float is exact in double; summing m positive terms in
         * double is off by at most (m - 1) 2^-53 of the sum (<= 3.4e-11 here),
         * for the reference and the op alike */
        double ref = 0.0;
        for (size_t i = 0; i < m; i++) ref += (double)x[i] * x[i];
        float *d = dnew(x, m);
        double got = O->sumsq(O, d, m);
        cr_expect(fabs(got - ref) <= 1e-10 * ref, "sumsq n=%zu: %.17g vs reference %.17g (seed %llu)", m, got, ref, SEED);
        ddone(d, m, "sumsq (input untouched)");
        free(x);
    }
    /* deterministic reduction: bitwise the same for any thread count */
    size_t m = 100003;
    float *x = hrandn(m, 1.0f), *d = dnew(x, m);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    double r1 = O->sumsq(O, d, m);
    for (int t = 2; t <= 4; t++) {
        omp_set_num_threads(t);
        double rt = O->sumsq(O, d, m);
        cr_expect(memcmp(&r1, &rt, sizeof r1) == 0, "sumsq n=%zu: %.17g with 1 thread but %.17g with %d (seed %llu)",
                  m, r1, rt, t, SEED);
    }
    omp_set_num_threads(saved);
    O->free(O, d);
    free(x);
}

/* ======================================================================
 * embedding
 * ====================================================================== */

Test(cpu_ops, embedding_fwd_bwd) {
    start("cpu_ops/embedding");
    /* B, T, C, V, Tmax (wpe rows; >= T). V small so tokens repeat and the
     * backward's scatter-add collides. */
    int shapes[8][5] = { { 3, 13, 29, 5, 17 }, { 1, 1, 1, 1, 1 }, { 2, 37, 70, 3, 40 }, { 4, 7, 33, 2, 7 } };
    for (int s = 4; s < 8; s++) {
        shapes[s][0] = rnd(1, 4); shapes[s][1] = rnd(1, 40); shapes[s][2] = rnd(1, 100);
        shapes[s][3] = rnd(1, 6); shapes[s][4] = shapes[s][1] + rnd(0, 5);
    }
    for (int s = 0; s < 8; s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], V = shapes[s][3], Tm = shapes[s][4];
        size_t nt = (size_t)B * T, no = nt * C, nte = (size_t)V * C, npe = (size_t)Tm * C;
        int32_t *tok = xcalloc(nt, sizeof(int32_t));
        for (size_t i = 0; i < nt; i++) tok[i] = rnd(0, V - 1);
        if (nt > 1) tok[nt - 1] = tok[0]; /* at least one collision */
        float *wte = hrandn(nte, 1.0f), *wpe = hrandn(npe, 1.0f), *dout = hrandn(no, 1.0f), *got = hf(no > nte ? (no > npe ? no : npe) : (nte > npe ? nte : npe));
        double *ref = hd(no), *dte = hd(nte), *dpe = hd(npe);
        char what[128], w2[160];
        snprintf(what, sizeof what, "embedding B=%d T=%d C=%d V=%d", B, T, C, V);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int c = 0; c < C; c++) {
                    int tk = tok[b * T + t];
                    size_t o = ((size_t)b * T + t) * C + c;
                    ref[o] = (double)wte[(size_t)tk * C + c] + wpe[(size_t)t * C + c];
                    dte[(size_t)tk * C + c] += dout[o];
                    dpe[(size_t)t * C + c] += dout[o];
                }
        int32_t *d_tok = dnew_i32(tok, nt);
        float *d_wte = dnew(wte, nte), *d_wpe = dnew(wpe, npe), *d_out = dnew(NULL, no);
        O->embedding_fwd(O, d_out, d_tok, d_wte, d_wpe, B, T, C);
        dget(got, d_out, no);
        snprintf(w2, sizeof w2, "%s: fwd", what);
        check_exact(w2, got, ref, no); /* one fp32 addition */
        ddone(d_out, no, w2);

        float *te_pre = hrandn(nte, 1.0f), *pe_pre = hrandn(npe, 1.0f), *d_dout = dnew(dout, no);
        float *d_dte = dnew(te_pre, nte), *d_dpe = dnew(pe_pre, npe);
        O->embedding_bwd(O, d_dte, d_dpe, d_dout, d_tok, B, T, C);
        dget(got, d_dte, nte);
        snprintf(w2, sizeof w2, "%s: dwte (+=)", what);
        check_acc(w2, got, te_pre, dte, nte, TOL);
        for (int v = 0; v < V; v++) { /* rows of unused tokens stay bit-identical */
            int used = 0;
            for (size_t i = 0; i < nt; i++) used |= tok[i] == v;
            if (!used) cr_expect(memcmp(got + (size_t)v * C, te_pre + (size_t)v * C, (size_t)C * sizeof(float)) == 0,
                                 "%s: row %d of unused token changed (seed %llu)", w2, v, SEED);
        }
        ddone(d_dte, nte, w2);
        dget(got, d_dpe, npe);
        snprintf(w2, sizeof w2, "%s: dwpe (+=)", what);
        check_acc(w2, got, pe_pre, dpe, npe, TOL);
        cr_expect(memcmp(got + (size_t)T * C, pe_pre + (size_t)T * C, (size_t)(Tm - T) * C * sizeof(float)) == 0,
                  "%s: rows >= T changed (seed %llu)", w2, SEED);
        ddone(d_dpe, npe, w2);

        O->free(O, d_tok); O->free(O, d_wte); O->free(O, d_wpe); O->free(O, d_dout);
        free(tok); free(wte); free(wpe); free(dout); free(got); free(ref); free(dte); free(dpe); free(te_pre); free(pe_pre);
    }
}

/* ======================================================================
 * softmax + cross-entropy
 * ====================================================================== */

/* runs softmax_xent on logits x[N][V] and checks losses and (when
 * grad_scale != 0) the in-place gradient against double references */
static void xent_case(const char *tag, const float *x, const int32_t *tg, int N, int V, float gs) {
    size_t n = (size_t)N * V;
    double *loss = hd(N), *grad = hd(n), *lb = hd(N), *prob = hd(n);
    for (int r = 0; r < N; r++) {
        const float *xr = x + (size_t)r * V;
        if (tg[r] < 0) continue;
        double mx = -INFINITY, s = 0.0;
        for (int i = 0; i < V; i++) mx = fmax(mx, xr[i]);
        for (int i = 0; i < V; i++) s += exp((double)xr[i] - mx);
        double lse = mx + log(s);
        loss[r] = lse - xr[tg[r]];
        for (int i = 0; i < V; i++) {
            prob[(size_t)r * V + i] = exp(xr[i] - lse);
            grad[(size_t)r * V + i] = (prob[(size_t)r * V + i] - (i == tg[r])) * gs;
        }
    }
    /* The op sums V exps (nawal_expf: ~2.5e-7 relative) in fp32, as 16
     * interleaved partial sums of V/16 terms added pairwise. A recursive fp32
     * sum of n positive terms is off by up to n 2^-24 of the sum (Higham's
     * bound), and with peaky logits a single running sum gets near that (terms
     * far below ulp(sum) rounded away in the same direction: measured 1.4e-4
     * at V = 50257, std 3). So on top of 1e-5 we allow (V/16 + 4) 2^-24
     * relative on every probability (and absolute on log-sum-exp). */
    double sumerr = (V / 16.0 + 4.0) * 0x1p-24;
    for (int r = 0; r < N; r++) lb[r] = TOL * fmax(1.0, fabs(loss[r])) + sumerr;
    char what[160];
    float *d_x = dnew(x, n), *d_l = dnew(NULL, N), *got = hf(n);
    int32_t *d_t = dnew_i32(tg, N);
    O->softmax_xent(O, d_x, d_l, d_t, N, V, gs);
    dget(got, d_l, N);
    snprintf(what, sizeof what, "softmax_xent %s N=%d V=%d grad_scale=%g: losses", tag, N, V, gs);
    check_bound(what, got, loss, lb, N);
    for (int r = 0; r < N; r++)
        if (tg[r] < 0) cr_expect(got[r] == 0.0f, "%s: ignored row %d has loss %g (seed %llu)", what, r, got[r], SEED);
        else cr_expect(isfinite(got[r]), "%s: row %d loss %g (seed %llu)", what, r, got[r], SEED);
    ddone(d_l, N, what);
    dget(got, d_x, n);
    if (gs != 0.0f) {
        snprintf(what, sizeof what, "softmax_xent %s N=%d V=%d grad_scale=%g: gradient", tag, N, V, gs);
        double gmax = maxabs(grad, n), *gb = hd(n);
        for (size_t i = 0; i < n; i++) gb[i] = TOL * (gmax > 0.0 ? gmax : 1.0) + sumerr * fabs(gs) * prob[i];
        check_bound(what, got, grad, gb, n);
        free(gb);
        for (int r = 0; r < N; r++)
            for (int i = 0; i < V && tg[r] < 0; i++)
                if (got[(size_t)r * V + i] != 0.0f) {
                    cr_expect(0, "%s: ignored row %d has gradient %g at %d (seed %llu)", what, r, got[(size_t)r * V + i], i, SEED);
                    break;
                }
    } else {
        snprintf(what, sizeof what, "softmax_xent %s N=%d V=%d grad_scale=0: logits", tag, N, V);
        cr_expect(memcmp(got, x, n * sizeof(float)) == 0, "%s were modified (seed %llu)", what, SEED);
    }
    ddone(d_x, n, what);
    O->free(O, d_t);
    free(loss); free(grad); free(lb); free(prob); free(got);
}

Test(cpu_ops, softmax_xent) {
    start("cpu_ops/softmax_xent");
    int shapes[8][2] = { { 13, 29 }, { 37, 1003 }, { 5, 1 }, { 1, 50257 }, { 64, 65 } };
    for (int s = 5; s < 8; s++) { shapes[s][0] = rnd(1, 40); shapes[s][1] = rnd(1, 500); }
    for (int s = 0; s < 8; s++) {
        int N = shapes[s][0], V = shapes[s][1];
        float *x = hrandn((size_t)N * V, 3.0f);
        int32_t *tg = xcalloc(N, sizeof(int32_t));
        for (int r = 0; r < N; r++) tg[r] = rnd(0, 4) == 0 ? -1 : rnd(0, V - 1);
        tg[0] = V - 1;              /* the last class */
        if (N > 2) tg[N / 2] = -1;  /* an ignored row */
        float scales[3] = { 1.0f / N, -0.7f, 0.0f };
        for (int k = 0; k < 3; k++) xent_case("random", x, tg, N, V, scales[k]);
        free(x);
        free(tg);
    }
    /* logits of size ~80 and beyond: exponents far outside fp32's range
     * unless the row max is subtracted first (rows 8, 9: all logits beyond
     * nawal_expf's clamp at -87 / 88) */
    int N = 10, V = 301;
    float *x = hf((size_t)N * V);
    int32_t tg[10];
    for (int r = 0; r < N; r++) {
        float *xr = x + (size_t)r * V;
        int amin = 0, amax = 0;
        for (int i = 0; i < V; i++) {
            switch (r) {
            case 2: xr[i] = 80.0f; break;
            case 3: xr[i] = -80.0f; break;
            case 4: xr[i] = i % 2 ? 80.0f : -80.0f; break;
            case 8: xr[i] = (float)unif(-200, -150); break;
            case 9: xr[i] = (float)unif(150, 200); break;
            default: xr[i] = (float)unif(-80, 80);
            }
            if (xr[i] < xr[amin]) amin = i;
            if (xr[i] > xr[amax]) amax = i;
        }
        tg[r] = r == 0 ? amin : r == 1 ? amax : r == 4 ? 2 : r == 7 ? -1 : rnd(0, V - 1);
    }
    xent_case("large logits", x, tg, N, V, 1.0f / 7);
    xent_case("large logits", x, tg, N, V, 0.0f);
    free(x);
}

/* ======================================================================
 * optimizers
 * ====================================================================== */

Test(cpu_ops, adamw) {
    start("cpu_ops/adamw");
    /* lr, beta1, beta2, eps, wd */
    static const float cfg[3][5] = { { 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f }, { 3e-4f, 0.9f, 0.95f, 1e-6f, 0.1f },
                                     { 1e-2f, 0.8f, 0.99f, 1e-8f, 0.0f } };
    static const int steps[] = { 1, 2, 3, 4, 5, 10, 11, 1000 };
    size_t n = 1003;
    for (int c = 0; c < 3; c++) {
        float lr = cfg[c][0], b1 = cfg[c][1], b2 = cfg[c][2], eps = cfg[c][3], wd = cfg[c][4];
        float *p = hrandn(n, 1.0f), *m = hf(n), *v = hf(n), *g = hf(n), *pn = hf(n), *mn = hf(n), *vn = hf(n);
        float *d_p = dnew(p, n), *d_m = dnew(m, n), *d_v = dnew(v, n);
        double *rp = hd(n), *rm = hd(n), *rv = hd(n), *bp = hd(n);
        for (int k = 0; k < 8; k++) {
            int t = steps[k];
            /* gradients spanning five decades, some exactly zero */
            for (size_t i = 0; i < n; i++) g[i] = i % 97 == 0 ? 0.0f : nrm() * (float)pow(10.0, unif(-4, 1));
            float *d_g = dnew(g, n);
            dget(p, d_p, n); dget(m, d_m, n); dget(v, d_v, n);
            /* PyTorch AdamW: p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
             * p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), hyperparameters as the floats passed */
            double B1 = b1, B2 = b2, bc1 = 1.0 - pow(B1, t), bc2 = 1.0 - pow(B2, t), maxd = 0.0;
            for (size_t i = 0; i < n; i++) {
                rm[i] = B1 * m[i] + (1.0 - B1) * g[i];
                rv[i] = B2 * v[i] + (1.0 - B2) * (double)g[i] * g[i];
                double pp = (double)p[i] * (1.0 - (double)lr * wd);
                rp[i] = pp - (double)lr * (rm[i] / bc1) / (sqrt(rv[i] / bc2) + (double)eps);
                maxd = fmax(maxd, fabs(rp[i] - p[i]));
            }
            /* p: 2e-5 of the largest step, plus the final rounding of p. The op
             * forms 1 - beta2^t in fp32, which cancels for small t (t = 2:
             * 0.5 ulp(0.998) / 0.002 ~ 1.5e-5 relative in v-hat, half of that
             * after the square root); PyTorch does it in double. */
            for (size_t i = 0; i < n; i++) bp[i] = 2e-5 * maxd + 0x1p-23 * fabs(rp[i]);
            O->adamw(O, d_p, d_g, d_m, d_v, n, lr, b1, b2, eps, wd, t);
            dget(pn, d_p, n); dget(mn, d_m, n); dget(vn, d_v, n);
            char what[128];
            snprintf(what, sizeof what, "adamw lr=%g b1=%g b2=%g eps=%g wd=%g t=%d: m", lr, b1, b2, eps, wd, t);
            check_rel(what, mn, rm, n, TOL);
            snprintf(what, sizeof what, "adamw lr=%g b1=%g b2=%g eps=%g wd=%g t=%d: v", lr, b1, b2, eps, wd, t);
            check_rel(what, vn, rv, n, TOL);
            snprintf(what, sizeof what, "adamw lr=%g b1=%g b2=%g eps=%g wd=%g t=%d: p", lr, b1, b2, eps, wd, t);
            check_bound(what, pn, rp, bp, n);
            O->free(O, d_g);
        }
        ddone(d_p, n, "adamw p");
        ddone(d_m, n, "adamw m");
        ddone(d_v, n, "adamw v");
        free(p); free(m); free(v); free(g); free(pn); free(mn); free(vn); free(rp); free(rm); free(rv); free(bp);
    }
}

Test(cpu_ops, sgd) {
    start("cpu_ops/sgd");
    /* lr, momentum, wd */
    static const float cfg[4][3] = { { 0.1f, 0.9f, 0.0f }, { 0.05f, 0.9f, 1e-2f }, { 0.01f, 0.0f, 5e-4f }, { 0.2f, 0.5f, 0.1f } };
    size_t n = 1003;
    for (int c = 0; c < 4; c++) {
        float lr = cfg[c][0], mu = cfg[c][1], wd = cfg[c][2];
        float *p = hrandn(n, 1.0f), *buf = hf(n), *g = hf(n), *pn = hf(n), *bn = hf(n);
        float *d_p = dnew(p, n), *d_b = dnew(buf, n);
        double *rp = hd(n), *rb = hd(n), *bp = hd(n);
        for (int step = 0; step < 5; step++) {
            for (size_t i = 0; i < n; i++) g[i] = nrm();
            float *d_g = dnew(g, n);
            dget(p, d_p, n); dget(buf, d_b, n);
            double maxd = 0.0;
            for (size_t i = 0; i < n; i++) {
                double gg = (double)g[i] + (double)wd * p[i];
                rb[i] = (double)mu * buf[i] + gg;
                rp[i] = p[i] - (double)lr * rb[i];
                maxd = fmax(maxd, fabs((double)lr * rb[i]));
            }
            /* a handful of fp32 roundings: 1e-5 of the largest step plus p's own rounding */
            for (size_t i = 0; i < n; i++) bp[i] = TOL * maxd + 0x1p-23 * fabs(rp[i]);
            O->sgd(O, d_p, d_g, d_b, n, lr, mu, wd);
            dget(pn, d_p, n); dget(bn, d_b, n);
            char what[128];
            snprintf(what, sizeof what, "sgd lr=%g momentum=%g wd=%g step %d: buf", lr, mu, wd, step + 1);
            check_rel(what, bn, rb, n, TOL);
            snprintf(what, sizeof what, "sgd lr=%g momentum=%g wd=%g step %d: p", lr, mu, wd, step + 1);
            check_bound(what, pn, rp, bp, n);
            O->free(O, d_g);
        }
        ddone(d_p, n, "sgd p");
        ddone(d_b, n, "sgd buf");
        free(p); free(buf); free(g); free(pn); free(bn); free(rp); free(rb); free(bp);
    }
}

/* ======================================================================
 * nawal_expf, Philox
 * ====================================================================== */

/* Measured over every float in [-87, 88] (offline, exhaustively): max
 * relative error 2.546e-7, at x = 48.8672371; the bound sits a little above.
 * The test sweeps 4e6 points plus 2e5 random ones and that worst point. */
#define EXPF_MAX_REL 3e-7

Test(cpu_ops, expf_accuracy) {
    start("cpu_ops/expf");
    double worst = 0.0, wx = 0.0;
    const int N = 4000000;
    for (int i = 0; i <= N + 200001; i++) {
        float x = i <= N ? (float)(-87.0 + 175.0 * (double)i / N) : i <= N + 200000 ? (float)unif(-87, 88) : 48.8672371f;
        double e = exp((double)x), r = fabs((double)nawal_expf(x) - e) / e;
        if (!(r <= worst)) { worst = r; wx = x; }
    }
    fprintf(stderr, "[cpu_ops/expf] nawal_expf max relative error %.3g at x = %.9g\n", worst, wx);
    cr_expect(worst <= EXPF_MAX_REL, "nawal_expf: max relative error %.3g at x = %.9g", worst, wx);
    /* documented clamp to [-87, 88]: finite and positive beyond it */
    cr_expect(nawal_expf(-1000.0f) == nawal_expf(-87.0f) && nawal_expf(-87.0f) > 0.0f);
    cr_expect(nawal_expf(1000.0f) == nawal_expf(88.0f) && isfinite(nawal_expf(88.0f)));
    cr_expect(nawal_expf(0.0f) == 1.0f, "nawal_expf(0) = %.9g", nawal_expf(0.0f));
}

Test(cpu_ops, philox_known_answers) {
    /* Random123 kat_vectors, philox4x32 10 rounds: counter c0..c3, key k0 k1, output */
    static const uint32_t kat[3][10] = {
        { 0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
        { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
        { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
    };
    for (int k = 0; k < 3; k++) {
        const uint32_t *c = kat[k];
        nawal_philox_ctr r = nawal_philox4x32(c[4] | (uint64_t)c[5] << 32, c[2] | (uint64_t)c[3] << 32, c[0] | (uint64_t)c[1] << 32);
        for (int i = 0; i < 4; i++)
            cr_expect(r.v[i] == c[6 + i], "philox KAT %d word %d: %08x, want %08x", k, i, r.v[i], c[6 + i]);
    }
}

Test(cpu_ops, philox_normal_moments) {
    start("cpu_ops/philox_normal");
    uint64_t key = test_rand_u64(&g_rng), stream = test_rand_u64(&g_rng);
    const size_t pairs = 500000, n = 2 * pairs;
    double s1 = 0.0, s2 = 0.0, s4 = 0.0, s01 = 0.0;
    for (size_t i = 0; i < pairs; i++) {
        float z0, z1;
        nawal_philox_normal2(key, stream, i, &z0, &z1);
        cr_assert(isfinite(z0) && isfinite(z1), "pair %zu not finite (seed %llu)", i, SEED);
        s1 += (double)z0 + z1;
        s2 += (double)z0 * z0 + (double)z1 * z1;
        s4 += (double)z0 * z0 * z0 * z0 + (double)z1 * z1 * z1 * z1;
        s01 += (double)z0 * z1;
    }
    double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n, cov = s01 / pairs;
    /* CLT, 5 sigma: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/n), sd(E z^4) =
     * sqrt((105 - 9)/n), sd(E z0 z1) = 1/sqrt(pairs) */
    cr_expect(fabs(mean) < 5.0 / sqrt((double)n), "normal mean %g (seed %llu)", mean, SEED);
    cr_expect(fabs(var - 1.0) < 5.0 * sqrt(2.0 / n), "normal variance %g (seed %llu)", var, SEED);
    cr_expect(fabs(kurt - 3.0) < 5.0 * sqrt(96.0 / n), "normal fourth moment %g (seed %llu)", kurt, SEED);
    cr_expect(fabs(cov) < 5.0 / sqrt((double)pairs), "z0, z1 correlation %g (seed %llu)", cov, SEED);
}
