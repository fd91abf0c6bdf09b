/* cpu_ops.h - internal prototypes of the CPU backend's ops, one file per op
 * family in kernels/cpu/, gathered into a nawal_ops table by cpu_backend.c. */
#ifndef NAWAL_CPU_OPS_H
#define NAWAL_CPU_OPS_H

#include "ops.h"
#include <omp.h>

/* This thread's share [lo, hi) of n elements inside an omp parallel region,
 * in blocks of 64 so each share stays vector- and cache-line-aligned.
 * Element-wise loops run on these ranges through plain restrict-qualified
 * functions, which GCC vectorises (it does not vectorise the same loop
 * written as `omp parallel for simd` over captured pointers). */
static inline void cpu_thread_range(size_t n, size_t *lo, size_t *hi) {
    size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    size_t blocks = (n + 63) / 64, per = (blocks + nt - 1) / nt;
    size_t a = id * per * 64, b = a + per * 64;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* The CPU backend's state (nawal_ops.impl of its one table). */
typedef struct { nawal_precision precision; } cpu_state;
nawal_precision cpu_precision(const nawal_ops *o);
const char *cpu_isa_name(void); /* oneDNN's effective ISA, e.g. "avx512_core_amx" */

/* One row-major product C = op(A) op(B) + beta C, BLAS-style arguments. */
typedef struct {
    char ta, tb;
    int M, N, K;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float beta;
    float *C;
    int ldc;
} cpu_gemm_args;

/* oneDNN matmul primitives (dnnl_matmul.c): C[i] = A[i] B[i] (+ C[i] when
 * beta_one) for i < batch, C[i] M x N fp32, A[i] M x K and B[i] K x N in
 * bf16 or fp32, each given by its element strides (batch, row, column), so
 * a transposed operand is just other strides. All members are long: the
 * plan cache compares shapes bytewise. */
typedef struct {
    long bf16;               /* A and B are bf16 (uint16_t), else fp32 */
    long batch, M, N, K;     /* batch 1: plain 2-D matrices */
    long sa[3], sb[3], sc[3];
    long beta_one;
} cpu_mm_shape;
#define CPU_MM_BUFFERS 4     /* operand buffers per workspace */
typedef struct cpu_mm_ws cpu_mm_ws;
cpu_mm_ws *cpu_mm_take(void);              /* a free workspace (waits when all are busy) */
void cpu_mm_give(cpu_mm_ws *w);
void *cpu_mm_buffer(cpu_mm_ws *w, int slot, size_t bytes); /* the workspace's operand buffer slot, grown */
void cpu_mm_run(cpu_mm_ws *w, const cpu_mm_shape *s, const void *A, const void *B, float *C);
const char *cpu_mm_impl(const cpu_mm_shape *s, char *buf, size_t len); /* oneDNN's kernel for s */

/* bf16 GEMMs (matmul_bf16.c): the n products in order, with both operands
 * rounded to bf16 and fp32 accumulation (beta 0 or 1), on the CPU's bf16
 * units; an operand two of them read is cast once. cpu_bf16_supported says
 * whether the CPU has those units (impl: oneDNN's kernel for them). */
void cpu_bf16_gemms(const cpu_gemm_args *g, int n);
int cpu_bf16_supported(const char **impl);

/* row-major C = alpha op(A) op(B) + beta C through oneDNN (aborts on a
 * library error, which only invalid shapes can cause) */
void cpu_sgemm(char ta, char tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *Cm, int ldc);
void cpu_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w,
                    const float *bias, int N, int C, int OC, nawal_wlayout layout);
void cpu_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                    const float *dout, const float *inp, const float *w,
                    int N, int C, int OC, nawal_wlayout layout);
void cpu_layernorm_fwd(const nawal_ops *o, float *out, float *mean, float *rstd,
                       const float *inp, const float *w, const float *b, int N, int C);
void cpu_layernorm_bwd(const nawal_ops *o, float *dinp, float *dw, float *db,
                       const float *dout, const float *inp, const float *w,
                       const float *mean, const float *rstd, int N, int C);
void cpu_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                       int B, int T, int C, int NH);
void cpu_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                       const float *qkv, const float *att, int B, int T, int C, int NH);
void cpu_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n);
void cpu_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n);
void cpu_residual_fwd(const nawal_ops *o, float *out, const float *a, const float *b, size_t n);
void cpu_embedding_fwd(const nawal_ops *o, float *out, const int32_t *tok,
                       const float *wte, const float *wpe, int B, int T, int C);
void cpu_embedding_bwd(const nawal_ops *o, float *dwte, float *dwpe, const float *dout,
                       const int32_t *tok, int B, int T, int C);
void cpu_softmax_xent(const nawal_ops *o, float *logits, float *losses, const int32_t *targets,
                      int N, int V, float grad_scale);
void cpu_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
               float lr, float beta1, float beta2, float eps, float wd, int t);
void cpu_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
             float lr, float momentum, float wd);
void cpu_fill(const nawal_ops *o, float *x, float value, size_t n);
void cpu_copy(const nawal_ops *o, float *dst, const float *src, size_t n);
void cpu_axpy(const nawal_ops *o, float *y, float a, const float *x, size_t n);
void cpu_scale(const nawal_ops *o, float *x, float a, size_t n);
double cpu_sumsq(const nawal_ops *o, const float *x, size_t n);
size_t cpu_topk_select(const nawal_ops *o, uint32_t *idx_out, const float *x, size_t n, size_t k); /* topk.c */

/* DP-SGD per-example ops (dp.c) */
void cpu_pe_norm_linear(const nawal_ops *o, float *norms, const float *A, const float *D, int B, int T, int d, int p);
void cpu_pe_norm_bias(const nawal_ops *o, float *norms, const float *D, int B, int T, int p);
void cpu_pe_bound_linear(const nawal_ops *o, float *bounds, const float *A, const float *D, int B, int T, int d, int p);
void cpu_pe_norm_layernorm(const nawal_ops *o, float *norms, const float *D, const float *inp,
                           const float *mean, const float *rstd, int B, int T, int C);
void cpu_pe_norm_rows(const nawal_ops *o, float *norms, const float *D, int B, int T, int C);
void cpu_pe_norm_tied(const nawal_ops *o, float *norms, const float *dres, const int32_t *tok, const float *lnf,
                      const float *dlogits, int B, int T, int C, int V);
/* one example's column sums of D[T][C] in double: cb[c] = sum_t D[t][c]
 * and, when inp is given, cw[c] = sum_t D[t][c] xhat[t][c] (dp.c; the
 * bias and layernorm shares of both DP methods) */
void cpu_example_colsums(double *cb, double *cw, const float *D, const float *inp, const float *mean,
                         const float *rstd, int T, int C);
void cpu_pe_grad_linear(const nawal_ops *o, float *dw, float *dbias, size_t stride, const float *dout,
                        const float *inp, int B, int T, int C, int OC, nawal_wlayout layout);
void cpu_pe_grad_layernorm(const nawal_ops *o, float *dw, float *db, size_t stride, const float *dout,
                           const float *inp, const float *mean, const float *rstd, int B, int T, int C);
void cpu_pe_sum(const nawal_ops *o, float *y, const float *X, size_t stride, const float *scales, int B, size_t n);
void cpu_scale_examples(const nawal_ops *o, float *x, const float *scales, int B, size_t n);
void cpu_add_noise(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream);
/* pe_norm_linear's two ways to the same norm: CPU_PE_AUTO takes the one
 * cpu_pe_ghost_cheaper picks (ghost when 2 T^2 (d + p) < 2 T d p FLOPs);
 * the tests force each one on every shape */
typedef enum { CPU_PE_AUTO = 0, CPU_PE_GHOST = 1, CPU_PE_MATERIALISE = 2 } cpu_pe_path;
int cpu_pe_ghost_cheaper(int T, int d, int p);
void cpu_pe_norm_linear_path(float *norms, const float *A, const float *D, int B, int T, int d, int p,
                             cpu_pe_path path);

#endif
