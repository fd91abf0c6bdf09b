/* matmul.c - CPU matmul forward/backward through oneDNN.
 *
 * fp32: oneDNN's sgemm, whose JIT kernel is picked for the CPU it finds
 * (AVX-512 on these hosts; nawal_ops_cpu_blas_name() reports which).
 * bf16: matmul_bf16.c (operands rounded to bf16, fp32 accumulation, on
 * AMX / AVX512-BF16). Bias is fused by seeding the output rows with it and
 * running the GEMM with beta = 1. */
#include "cpu_ops.h"
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cpu_sgemm(char ta, char tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *Cm, int ldc) {
    dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
    if (st != dnnl_success) {
        fprintf(stderr, "nawal: dnnl_sgemm(%c,%c,%d,%d,%d) failed with status %d\n", ta, tb, M, N, K, (int)st);
        abort();
    }
}

/* the layer's product in the backend's precision */
static void gemm(const nawal_ops *o, char ta, char tb, int M, int N, int K, const float *A, int lda,
                 const float *B, int ldb, float beta, float *Cm, int ldc) {
    if (cpu_precision(o) == NAWAL_PREC_BF16) cpu_bf16_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, Cm, ldc);
    else cpu_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, Cm, ldc);
}

void cpu_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w,
                    const float *bias, int N, int C, int OC, nawal_wlayout layout) {
    float beta = 0.0f;
    if (bias) {
        #pragma omp parallel for
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    if (layout == NAWAL_W_IN_OUT) gemm(o, 'N', 'N', N, OC, C, inp, C, w, OC, beta, out, OC);
    else gemm(o, 'N', 'T', N, OC, C, inp, C, w, C, beta, out, OC);
}

void cpu_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                    const float *dout, const float *inp, const float *w,
                    int N, int C, int OC, nawal_wlayout layout) {
    if (dinp) {
        if (layout == NAWAL_W_IN_OUT) gemm(o, 'N', 'T', N, C, OC, dout, OC, w, OC, 0.0f, dinp, C);
        else gemm(o, 'N', 'N', N, C, OC, dout, OC, w, C, 0.0f, dinp, C);
    }
    if (dw && layout == NAWAL_W_IN_OUT) gemm(o, 'T', 'N', C, OC, N, inp, C, dout, OC, 1.0f, dw, OC);
    else if (dw) gemm(o, 'T', 'N', OC, C, N, dout, OC, inp, C, 1.0f, dw, C);
    if (dbias) {
        /* column sums in blocks of 64 columns: deterministic, rows summed in order */
        int nblk = (OC + 63) / 64;
        #pragma omp parallel for
        for (int bk = 0; bk < nblk; bk++) {
            int c0 = bk * 64, c1 = c0 + 64 < OC ? c0 + 64 : OC;
            float acc[64];
            for (int c = c0; c < c1; c++) acc[c - c0] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float *row = dout + (size_t)n * OC;
                for (int c = c0; c < c1; c++) acc[c - c0] += row[c];
            }
            for (int c = c0; c < c1; c++) dbias[c] += acc[c - c0];
        }
    }
}
