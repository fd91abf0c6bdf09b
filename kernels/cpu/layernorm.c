/* layernorm.c - CPU layer normalisation forward/backward (eps 1e-5, GPT-2).
 * Rows are independent in the forward; the backward computes dinp per row
 * and the parameter gradients per column block, so every reduction runs in a
 * fixed order (deterministic for any thread count). */
#include "cpu_ops.h"
#include <math.h>

#define LN_EPS 1e-5f

void cpu_layernorm_fwd(const nawal_ops *o, float *out, float *mean, float *rstd,
                       const float *inp, const float *w, const float *b, int N, int C) {
    (void)o;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float m = 0.0f;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        float v = 0.0f;
        for (int i = 0; i < C; i++) { float d = x[i] - m; v += d * d; }
        v /= C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        for (int i = 0; i < C; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

void cpu_layernorm_bwd(const nawal_ops *o, float *dinp, float *dw, float *db,
                       const float *dout, const float *inp, const float *w,
                       const float *mean, const float *rstd, int N, int C) {
    (void)o;
    #pragma omp parallel for if (dinp)
    for (int n = 0; n < (dinp ? N : 0); n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float sum_dn = 0.0f, sum_dn_xh = 0.0f;
        for (int i = 0; i < C; i++) {
            float xh = (x[i] - m) * s, dn = dy[i] * w[i];
            sum_dn += dn;
            sum_dn_xh += dn * xh;
        }
        sum_dn /= C;
        sum_dn_xh /= C;
        for (int i = 0; i < C; i++) {
            float xh = (x[i] - m) * s;
            dx[i] += s * (dy[i] * w[i] - sum_dn - xh * sum_dn_xh);
        }
    }
    int nblk = dw || db ? (C + 63) / 64 : 0;
    #pragma omp parallel for
    for (int bk = 0; bk < nblk; bk++) {
        int c0 = bk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        float aw[64], ab[64];
        for (int c = c0; c < c1; c++) aw[c - c0] = ab[c - c0] = 0.0f;
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            for (int c = c0; c < c1; c++) {
                aw[c - c0] += dy[c] * (x[c] - m) * s;
                ab[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) { dw[c] += aw[c - c0]; db[c] += ab[c - c0]; }
    }
}
