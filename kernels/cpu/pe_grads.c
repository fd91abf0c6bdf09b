/* pe_grads.c - CPU per-example gradients, materialised: the ops behind
 * DP-SGD's per-example method (model/dp.c), where every example's whole
 * gradient is written out, its norm measured from the stored values and
 * the clipped sum formed from the same values, so a clipped example adds
 * exactly C whatever the matmul precision.
 *
 * pe_grad_linear in fp32 is one batched oneDNN matmul per call
 * (dnnl_matmul.c): example b's product A_b^T D_b goes to dw + b * stride,
 * the transposed operand described by strides; in bf16 it is one product
 * per example through matmul_bf16.c, the path (and oneDNN kernel) of the
 * ordinary bf16 weight gradients. Column sums
 * (biases, layernorm) accumulate in double, one example per OpenMP
 * iteration, so nothing depends on the thread count. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <stdio.h>
#include <stdlib.h>

/* the B products of pe_grad_linear as one batched matmul: M x N outputs
 * with row stride N, batch stride `stride`, from A_b = src_a^T and B_b =
 * src_b, both [T][.] row-major slabs of their [B*T][.] matrices */
static cpu_mm_shape grad_shape(int B, int T, long M, long N, size_t stride) {
    long t = T;
    return (cpu_mm_shape){ .bf16 = 0, .batch = B, .M = M, .N = N, .K = t, .sa = { t * M, 1, M }, .sb = { t * N, N, 1 },
                           .sc = { (long)stride, N, 1 }, .beta_one = 0 };
}

/* out_b[c] = sum_t D_b[t][c] (and out_w_b[c] = sum_t D_b[t][c] xhat_b[t][c]
 * when inp is given), in double, rounded once */
static void colsums(float *out, float *out_w, size_t stride, const float *D, const float *inp, const float *mean,
                    const float *rstd, int B, int T, int C) {
    #pragma omp parallel
    {
        double *acc = malloc((size_t)2 * C * sizeof(double));
        if (!acc) {
            fprintf(stderr, "nawal: out of memory in a per-example gradient op\n");
            abort();
        }
        double *aw = acc + C;
        #pragma omp for schedule(static, 1)
        for (int b = 0; b < B; b++) {
            size_t r0 = (size_t)b * T;
            cpu_example_colsums(acc, aw, D + r0 * C, inp ? inp + r0 * C : NULL, inp ? mean + r0 : NULL,
                                inp ? rstd + r0 : NULL, T, C);
            float *o = out + (size_t)b * stride, *ow = out_w ? out_w + (size_t)b * stride : NULL;
            for (int c = 0; c < C; c++) o[c] = (float)acc[c];
            if (ow)
                for (int c = 0; c < C; c++) ow[c] = (float)aw[c];
        }
        free(acc);
    }
}

void cpu_pe_grad_linear(const nawal_ops *o, float *dw, float *dbias, size_t stride, const float *dout,
                        const float *inp, int B, int T, int C, int OC, nawal_wlayout layout) {
    if (B <= 0 || T <= 0 || C <= 0 || OC <= 0) return;
    int bf16 = cpu_precision(o) == NAWAL_PREC_BF16;
    /* IN_OUT dw_b [C][OC] = inp_b^T dout_b; OUT_IN dw_b [OC][C] = dout_b^T inp_b */
    const float *a = layout == NAWAL_W_IN_OUT ? inp : dout, *b = layout == NAWAL_W_IN_OUT ? dout : inp;
    long M = layout == NAWAL_W_IN_OUT ? C : OC, N = layout == NAWAL_W_IN_OUT ? OC : C;
    if (bf16) { /* example by example through the bf16 path the ordinary weight gradients take */
        for (int e = 0; e < B; e++) {
            cpu_gemm_args g = { 'T', 'N', (int)M, (int)N, T, a + (size_t)e * T * M, (int)M, b + (size_t)e * T * N, (int)N,
                                0.0f, dw + (size_t)e * stride, (int)N };
            cpu_bf16_gemms(&g, 1);
        }
    } else {
        cpu_mm_shape s = grad_shape(B, T, M, N, stride);
        cpu_mm_ws *w = cpu_mm_take();
        cpu_mm_run(w, &s, a, b, dw);
        cpu_mm_give(w);
    }
    if (dbias) colsums(dbias, NULL, stride, dout, NULL, NULL, NULL, B, T, OC);
}

void cpu_pe_grad_layernorm(const nawal_ops *o, float *dw, float *db, size_t stride, const float *dout,
                           const float *inp, const float *mean, const float *rstd, int B, int T, int C) {
    (void)o;
    if (B <= 0 || T <= 0 || C <= 0) return;
    colsums(db, dw, stride, dout, inp, mean, rstd, B, T, C);
}

/* in blocks of PE_SUM_BLOCK elements: the examples' rows stream through
 * the block's sums (which vectorise), then y += the sums */
#define PE_SUM_BLOCK 512
static void pe_sum_range(float *restrict y, const float *restrict X, size_t stride, const float *scales, int B,
                         size_t lo, size_t hi) {
    float acc[PE_SUM_BLOCK];
    for (size_t i0 = lo; i0 < hi; i0 += PE_SUM_BLOCK) {
        size_t n = hi - i0 < PE_SUM_BLOCK ? hi - i0 : PE_SUM_BLOCK;
        for (size_t i = 0; i < n; i++) acc[i] = 0.0f;
        for (int b = 0; b < B; b++) {
            const float *x = X + (size_t)b * stride + i0;
            float sb = scales[b];
            for (size_t i = 0; i < n; i++) acc[i] = nawal_pe_sum_term(acc[i], sb, x[i]);
        }
        for (size_t i = 0; i < n; i++) y[i0 + i] += acc[i];
    }
}

void cpu_pe_sum(const nawal_ops *o, float *y, const float *X, size_t stride, const float *scales, int B, size_t n) {
    (void)o;
    if (B <= 0 || !n) return;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        pe_sum_range(y, X, stride, scales, B, lo, hi);
    }
}
