/* cuda_common.h - shared state and helpers of the CUDA backend plugin.
 *
 * kernels/cuda/ implements every op of ops.h on one CUDA stream; this header
 * holds the backend's private state (stream, cuBLAS/cuBLASLt handles and
 * workspaces, scratch buffers), the checked-call macros and launch helpers
 * that every .cu file of the folder uses. An error in any CUDA or cuBLAS call
 * is fatal: it prints the op, the call and the library's message, then
 * aborts (there is no way to recover a half-applied training step). */
#ifndef NAWAL_CUDA_COMMON_H
#define NAWAL_CUDA_COMMON_H

#include "ops.h"
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cuda_matmul_plan cuda_matmul_plan; /* matmul.cu's descriptor cache */

typedef struct {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace;                /* cuBLASLt workspace */
    size_t lt_workspace_bytes;
    void *blas_workspace;              /* cuBLAS workspace (fixed, so graphs can capture) */
    nawal_precision precision;
    cublasComputeType_t compute;       /* matmul compute type for the precision */
    void *scratch;                     /* grow-only scratch (reduction partials, sort buffers) */
    size_t scratch_bytes;
    double *host_result;               /* pinned: sumsq's result */
    void **ptrs;                       /* attention.cu: batched-GEMM operand pointers */
    size_t ptrs_cap;
    cuda_matmul_plan *plans;           /* matmul.cu */
    int n_plans;
    int capturing;                     /* graph.cu: a graph capture is recording the stream */
    unsigned long long generation;     /* bumped when scratch or ptrs move: older graphs are stale */
} cuda_state;

#define CUDA_STATE(o) ((cuda_state *)(o)->impl)

void cuda_fatal(const char *op, const char *call, const char *msg, const char *file, int line);
const char *cuda_blas_status_name(cublasStatus_t s);

/* CUDA_CHECK(op, call): run a CUDA runtime call, die naming op and call on error */
#define CUDA_CHECK(op, call)                                                          \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) cuda_fatal(op, #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)
#define BLAS_CHECK(op, call)                                                          \
    do {                                                                              \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) cuda_fatal(op, #call, cuda_blas_status_name(s_), __FILE__, __LINE__); \
    } while (0)
/* after every kernel launch: catches bad launch configurations at once */
#define LAUNCH_CHECK(op, kname)                                                       \
    do {                                                                              \
        cudaError_t e_ = cudaGetLastError();                                          \
        if (e_ != cudaSuccess) cuda_fatal(op, "launch of " kname, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

static inline unsigned cuda_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 8u ? 65535u * 8u : (b ? b : 1));
}

/* Returns scratch of at least `bytes` (grown with cudaMalloc when needed,
 * which moves the generation on; growing it inside a graph capture is a
 * fatal error: the captured shapes must have run uncaptured first). */
void *cuda_scratch(const nawal_ops *o, size_t bytes);

/* Deterministic column sums of a row-major [N][C] matrix, accumulated into
 * out[C] (+=). If xhat_inp is non-NULL, also accumulates
 * out_w[c] += sum_n dout[n][c] * (inp[n][c] - mean[n]) * rstd[n] (layernorm's
 * weight gradient). Fixed row chunks, partials summed in chunk order. */
void cuda_colsum(const nawal_ops *o, const char *op, float *out, float *out_w, const float *dout,
                 const float *xhat_inp, const float *mean, const float *rstd, int N, int C);

/* ops, one family per file */
void cuda_fill(const nawal_ops *o, float *x, float value, size_t n);
void cuda_copy(const nawal_ops *o, float *dst, const float *src, size_t n);
void cuda_axpy(const nawal_ops *o, float *y, float a, const float *x, size_t n);
void cuda_scale(const nawal_ops *o, float *x, float a, size_t n);
double cuda_sumsq(const nawal_ops *o, const float *x, size_t n);
void cuda_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w,
                     const float *bias, int N, int C, int OC, nawal_wlayout layout);
void cuda_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                     const float *dout, const float *inp, const float *w,
                     int N, int C, int OC, nawal_wlayout layout);
void cuda_matmul_plans_free(cuda_state *s);
void cuda_layernorm_fwd(const nawal_ops *o, float *out, float *mean, float *rstd,
                        const float *inp, const float *w, const float *b, int N, int C);
void cuda_layernorm_bwd(const nawal_ops *o, float *dinp, float *dw, float *db,
                        const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C);
void cuda_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                        int B, int T, int C, int NH);
void cuda_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                        const float *qkv, const float *att, int B, int T, int C, int NH);
/* attention_flash.cu: the same op without the T x T matrices (att keeps the
 * rows' log-sum-exp, datt their D). cuda_flash_attention_on: whether a call
 * with head size hs takes it (NAWAL_CUDA_ATTENTION=flash, read at every
 * call, so a test can switch it; hs <= 64). */
int cuda_flash_attention_on(int hs);
void cuda_flash_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH);
void cuda_flash_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int NH);
void cuda_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n);
void cuda_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n);
void cuda_residual_fwd(const nawal_ops *o, float *out, const float *a, const float *b, size_t n);
void cuda_embedding_fwd(const nawal_ops *o, float *out, const int32_t *tok,
                        const float *wte, const float *wpe, int B, int T, int C);
void cuda_embedding_bwd(const nawal_ops *o, float *dwte, float *dwpe, const float *dout,
                        const int32_t *tok, int B, int T, int C);
void cuda_softmax_xent(const nawal_ops *o, float *logits, float *losses, const int32_t *targets,
                       int N, int V, float grad_scale);
void cuda_pe_norm_linear(const nawal_ops *o, float *norms, const float *A, const float *D, int B, int T, int d, int p);
void cuda_pe_norm_bias(const nawal_ops *o, float *norms, const float *D, int B, int T, int p);
void cuda_pe_bound_linear(const nawal_ops *o, float *bounds, const float *A, const float *D, int B, int T, int d, int p);
void cuda_pe_norm_layernorm(const nawal_ops *o, float *norms, const float *D, const float *inp,
                            const float *mean, const float *rstd, int B, int T, int C);
void cuda_pe_norm_rows(const nawal_ops *o, float *norms, const float *D, int B, int T, int C);
void cuda_pe_norm_tied(const nawal_ops *o, float *norms, const float *dres, const int32_t *tok, const float *lnf,
                       const float *dlogits, int B, int T, int C, int V);
void cuda_pe_grad_linear(const nawal_ops *o, float *dw, float *dbias, size_t stride, const float *dout,
                         const float *inp, int B, int T, int C, int OC, nawal_wlayout layout);
void cuda_pe_grad_layernorm(const nawal_ops *o, float *dw, float *db, size_t stride, const float *dout,
                            const float *inp, const float *mean, const float *rstd, int B, int T, int C);
void cuda_pe_sum(const nawal_ops *o, float *y, const float *X, size_t stride, const float *scales, int B, size_t n);
/* matmul.cu: pe_grad_linear's weight products, one strided-batched cuBLASLt
 * call in the backend's precision (dw_b overwritten) */
void cuda_pe_grad_gemm(const nawal_ops *o, float *dw, size_t stride, const float *dout, const float *inp, int B, int T,
                       int C, int OC, nawal_wlayout layout);
void cuda_scale_examples(const nawal_ops *o, float *x, const float *scales, int B, size_t n);
void cuda_add_noise(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream);
void cuda_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
                float lr, float beta1, float beta2, float eps, float wd, int t);
void cuda_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
              float lr, float momentum, float wd);
int cuda_capture_begin(const nawal_ops *o); /* graph.cu */
void *cuda_capture_end(const nawal_ops *o);
int cuda_graph_launch(const nawal_ops *o, void *graph);
void cuda_graph_free(const nawal_ops *o, void *graph);
/* a buffer that captured graphs point into is being reallocated: fatal
 * during a capture (what names the buffer), else older graphs go stale */
void cuda_buffers_moving(cuda_state *s, const char *op, const char *what);
size_t cuda_topk_select(const nawal_ops *o, uint32_t *idx_out, const float *x, size_t n, size_t k); /* topk.cu */

#endif
