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

/* the layer's products, in order, in the backend's precision */
static void gemms(const nawal_ops *o, const cpu_gemm_args *g, int n) {
    if (cpu_precision(o) == NAWAL_PREC_BF16) {
        cpu_bf16_gemms(g, n);
        return;
    }
    for (int i = 0; i < n; i++)
        cpu_sgemm(g[i].ta, g[i].tb, g[i].M, g[i].N, g[i].K, 1.0f, g[i].A, g[i].lda, g[i].B, g[i].ldb, g[i].beta, g[i].C,
                  g[i].ldc);
}

void cpu_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w,
                    const float *bias, int N, int C, int OC, nawal_wlayout layout) {
    float beta = 0.0f;
    if (bias) {
        #pragma omp parallel for
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    cpu_gemm_args g = layout == NAWAL_W_IN_OUT
                          ? (cpu_gemm_args){ 'N', 'N', N, OC, C, inp, C, w, OC, beta, out, OC }
                          : (cpu_gemm_args){ 'N', 'T', N, OC, C, inp, C, w, C, beta, out, OC };
    gemms(o, &g, 1);
}

/* dinp = dout w^T and dw += inp^T dout: both read dout (cast once in bf16) */
void cpu_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                    const float *dout, const float *inp, const float *w,
                    int N, int C, int OC, nawal_wlayout layout) {
    cpu_gemm_args g[2];
    int count = 0;
    if (dinp)
        g[count++] = layout == NAWAL_W_IN_OUT ? (cpu_gemm_args){ 'N', 'T', N, C, OC, dout, OC, w, OC, 0.0f, dinp, C }
                                          : (cpu_gemm_args){ 'N', 'N', N, C, OC, dout, OC, w, C, 0.0f, dinp, C };
    if (dw)
        g[count++] = layout == NAWAL_W_IN_OUT ? (cpu_gemm_args){ 'T', 'N', C, OC, N, inp, C, dout, OC, 1.0f, dw, OC }
                                          : (cpu_gemm_args){ 'T', 'N', OC, C, N, dout, OC, inp, C, 1.0f, dw, C };
    gemms(o, g, count);
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
