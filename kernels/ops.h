/* ops.h - the one interface through which all numeric work goes.
 *
 * A backend (CPU in kernels/cpu/, CUDA in kernels/cuda/ as a plugin opened on
 * demand) fills a nawal_ops table. The model code in model/ is written once
 * against this table and never touches memory directly: every float* / int*
 * argument below is a *device buffer handle* obtained from ops->alloc (a host
 * pointer for the CPU backend, a device pointer for CUDA). Host data moves in
 * and out only through upload/download.
 *
 * Conventions (llm.c style): B batch, T time, C channels, NH heads,
 * OC output channels, V vocab, N = B*T rows. Tensors are row-major.
 * "+=" in a comment means the op accumulates into that output; everything
 * else is overwritten. Weight layouts: NAWAL_W_IN_OUT is Hugging Face's
 * Conv1D layout w[C][OC] (out = inp @ w); NAWAL_W_OUT_IN is w[OC][C]
 * (out = inp @ w^T, used for the tied LM head wte[V][C]). */
#ifndef NAWAL_OPS_H
#define NAWAL_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" { /* the CUDA backend includes this from C++ (.cu) */
#endif

typedef enum { NAWAL_W_IN_OUT = 0, NAWAL_W_OUT_IN = 1 } nawal_wlayout;

/* Matmul arithmetic. Weights, gradients and optimizer state stay fp32 in
 * every mode; tf32/bf16 round the matmul operands for the tensor cores (or
 * a CPU's AMX / AVX512-BF16 units) and accumulate in fp32. */
typedef enum { NAWAL_PREC_FP32 = 0, NAWAL_PREC_TF32 = 1, NAWAL_PREC_BF16 = 2 } nawal_precision;

/* The layout of nawal_ops below: bumped whenever a member is added, moved or
 * changes its signature, so a CUDA plugin built from another ops.h is
 * refused at load instead of being called through the wrong slots. */
#define NAWAL_OPS_ABI 5

typedef struct nawal_ops nawal_ops;
struct nawal_ops {
    const char *name;                 /* "cpu", "cuda" */
    char device_desc[128];            /* human description of the device */

    /* ---- memory ---- */
    void *(*alloc)(const nawal_ops *o, size_t bytes);         /* NULL on failure */
    void (*free)(const nawal_ops *o, void *p);
    void (*upload)(const nawal_ops *o, void *dst, const void *src_host, size_t bytes);
    void (*download)(const nawal_ops *o, void *dst_host, const void *src, size_t bytes);
    void (*sync)(const nawal_ops *o);

    /* ---- vector basics ---- */
    void (*fill)(const nawal_ops *o, float *x, float value, size_t n);
    void (*copy)(const nawal_ops *o, float *dst, const float *src, size_t n);
    void (*axpy)(const nawal_ops *o, float *y, float a, const float *x, size_t n); /* y += a x */
    void (*scale)(const nawal_ops *o, float *x, float a, size_t n);               /* x *= a */
    /* sum of squares of x[0..n), deterministic reduction, accumulated in double */
    double (*sumsq)(const nawal_ops *o, const float *x, size_t n);

    /* ---- layers ---- */
    /* out[N][OC] = inp[N][C] @ w (+ bias[OC] if bias) */
    void (*matmul_fwd)(const nawal_ops *o, float *out, const float *inp, const float *w,
                       const float *bias, int N, int C, int OC, nawal_wlayout layout);
    /* dinp[N][C] = dout @ w^T (skipped if dinp NULL); dw += inp^T dout in w's layout
     * (skipped if dw NULL); dbias[OC] += column sums of dout (skipped if dbias NULL) */
    void (*matmul_bwd)(const nawal_ops *o, float *dinp, float *dw, float *dbias,
                       const float *dout, const float *inp, const float *w,
                       int N, int C, int OC, nawal_wlayout layout);
    /* out[N][C] = (inp - mean) * rstd * w + b; saves mean[N], rstd[N]; eps 1e-5 */
    void (*layernorm_fwd)(const nawal_ops *o, float *out, float *mean, float *rstd,
                          const float *inp, const float *w, const float *b, int N, int C);
    /* dinp += ... (skipped if dinp NULL), dw += ..., db += ... (skipped if both NULL) */
    void (*layernorm_bwd)(const nawal_ops *o, float *dinp, float *dw, float *db,
                          const float *dout, const float *inp, const float *w,
                          const float *mean, const float *rstd, int N, int C);
    /* qkv[B][T][3C] (q|k|v, heads of size C/NH inside each) -> out[B][T][C];
     * att[B][NH][T][T] keeps the causal softmax probabilities for backward */
    void (*attention_fwd)(const nawal_ops *o, float *out, float *att, const float *qkv,
                          int B, int T, int C, int NH);
    /* dqkv[B][T][3C] = ...; datt[B][NH][T][T] is scratch */
    void (*attention_bwd)(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                          const float *qkv, const float *att, int B, int T, int C, int NH);
    void (*gelu_fwd)(const nawal_ops *o, float *out, const float *inp, size_t n);
    /* dinp = gelu'(inp) * dout; dinp may alias dout */
    void (*gelu_bwd)(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n);
    /* out = a + b */
    void (*residual_fwd)(const nawal_ops *o, float *out, const float *a, const float *b, size_t n);
    /* out[B][T][C] = wte[tok[b][t]] + wpe[t]; token ids must be in [0,V) */
    void (*embedding_fwd)(const nawal_ops *o, float *out, const int32_t *tok,
                          const float *wte, const float *wpe, int B, int T, int C);
    /* dwte += scatter of dout by token, dwpe += sum of dout over batch */
    void (*embedding_bwd)(const nawal_ops *o, float *dwte, float *dwpe, const float *dout,
                          const int32_t *tok, int B, int T, int C);
    /* Fused softmax + cross-entropy over logits[N][V]: losses[N] = -log p[target];
     * rows with target < 0 are ignored (loss 0, zero gradient). If grad_scale != 0
     * the logits are overwritten in place by dloss/dlogits * grad_scale
     * (= (p - onehot) * grad_scale), computed in the same pass: the
     * probabilities are never stored. */
    void (*softmax_xent)(const nawal_ops *o, float *logits, float *losses, const int32_t *targets,
                         int N, int V, float grad_scale);

    /* ---- differential privacy: per-example quantities for DP-SGD ----
     * A batch is B examples of T rows each (rows b*T .. b*T+T-1 are example
     * b). norms[B] is a device buffer of squared L2 norms that these ops add
     * to (+=), one contribution per parameter tensor. */
    /* norms[b] += ||A_b^T D_b||_F^2, A[B*T][d] the layer's inputs, D[B*T][p] its
     * output gradients: the squared norm of example b's weight gradient of a
     * linear layer, without materialising it where the ghost form
     * sum_{s,t} (A_b A_b^T)_{st} (D_b D_b^T)_{st} is cheaper (2 T^2 < d p) */
    void (*pe_norm_linear)(const nawal_ops *o, float *norms, const float *A, const float *D, int B, int T, int d, int p);
    /* bounds[b] += (sum_t ||A_b[t]|| ||D_b[t]||)^2, A[B*T][d], D[B*T][p]: with
     * operands rounded to unit roundoff u, example b's weight gradient of
     * the linear layer moves by at most (2u + u^2) sum_t ||A_b[t]|| ||D_b[t]||
     * (Frobenius), the margin that keeps reduced-precision clipped sums
     * within C (model/dp.c). Row norms and their products in double. */
    void (*pe_bound_linear)(const nawal_ops *o, float *bounds, const float *A, const float *D, int B, int T, int d, int p);
    /* norms[b] += ||sum_t D_b[t]||^2 (a bias's per-example gradient), D[B*T][p] */
    void (*pe_norm_bias)(const nawal_ops *o, float *norms, const float *D, int B, int T, int p);
    /* norms[b] += ||sum_t D_b[t] * xhat_b[t]||^2 + ||sum_t D_b[t]||^2 with
     * xhat = (inp - mean) * rstd: layernorm weight + bias, D, inp [B*T][C] */
    void (*pe_norm_layernorm)(const nawal_ops *o, float *norms, const float *D, const float *inp,
                              const float *mean, const float *rstd, int B, int T, int C);
    /* norms[b] += sum_t ||D_b[t]||^2: the position embedding's per-example
     * gradient (each position occurs once in an example), D[B*T][C] */
    void (*pe_norm_rows)(const nawal_ops *o, float *norms, const float *D, int B, int T, int C);
    /* norms[b] += ||E_b + H_b||_F^2 for the tied token-embedding / LM-head
     * matrix [V][C]: E_b scatters dres_b's rows by token tok_b (embedding
     * lookup gradient), H_b = dlogits_b^T lnf_b (LM-head gradient); the cross
     * term 2<E_b, H_b> included. dres, lnf [B*T][C]; dlogits [B*T][V] */
    void (*pe_norm_tied)(const nawal_ops *o, float *norms, const float *dres, const int32_t *tok, const float *lnf,
                         const float *dlogits, int B, int T, int C, int V);
    /* ---- per-example gradients, materialised (DP-SGD's per-example
     * method, model/dp.c): example b's tensors start b * stride floats
     * after the output pointers, and these ops overwrite (=) them ---- */
    /* dw_b = A_b^T D_b in w's layout (IN_OUT [C][OC], OUT_IN [OC][C]) and,
     * if dbias, dbias_b[j] = sum_t D_b[t][j], for b < B; A = inp[B*T][C],
     * D = dout[B*T][OC]; the products in the backend's matmul precision */
    void (*pe_grad_linear)(const nawal_ops *o, float *dw, float *dbias, size_t stride, const float *dout,
                           const float *inp, int B, int T, int C, int OC, nawal_wlayout layout);
    /* dw_b[c] = sum_t D_b[t][c] xhat_b[t][c], db_b[c] = sum_t D_b[t][c], for
     * b < B, xhat = (inp - mean) * rstd: layernorm's weight and bias */
    void (*pe_grad_layernorm)(const nawal_ops *o, float *dw, float *db, size_t stride, const float *dout,
                              const float *inp, const float *mean, const float *rstd, int B, int T, int C);
    /* y[i] += sum_b scales[b] X[b * stride + i] for i < n, the examples
     * summed in order, then added to y (nawal_pe_sum_term, elementwise.h) */
    void (*pe_sum)(const nawal_ops *o, float *y, const float *X, size_t stride, const float *scales, int B, size_t n);
    /* x[b][0..n) *= scales[b] for each example b (x is [B][n]; scales a device buffer) */
    void (*scale_examples)(const nawal_ops *o, float *x, const float *scales, int B, size_t n);
    /* x[i] += std * z_i for i in [0, n): z_i standard normal, element i of
     * stream `stream` of Philox4x32-10 keyed by `key` (z[i % 4] of
     * nawal_philox_gauss4 at block i/4): the same numbers, bit for bit, on
     * every backend for the same key */
    void (*add_noise)(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream);

    /* ---- optimizers (t is the 1-based step count) ---- */
    void (*adamw)(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float wd, int t);
    void (*sgd)(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
                float lr, float momentum, float wd);

    /* ---- compression ---- */
    /* Top-k by magnitude (delta sparsification): writes to idx_out the indices
     * of the min(k, n) elements of x[0..n) with the largest |x|, in increasing
     * order, and returns their count. Equal |x| go to the lower index; |x| is
     * compared as x's bits with the sign cleared (topk.h), so NaNs rank above
     * infinities. n <= UINT32_MAX. Expected O(n), no full sort; every backend
     * selects exactly the same elements. idx_out is a device buffer. */
    size_t (*topk_select)(const nawal_ops *o, uint32_t *idx_out, const float *x, size_t n, size_t k);

    /* ---- execution ---- */
    /* Selects the matmul precision; 0, or -1 with a message when the
     * backend cannot run it (the CPU backend: fp32, and bf16 where the CPU
     * has bf16 matmul units; CUDA: all three). */
    int (*set_precision)(const nawal_ops *o, nawal_precision p, char *err, size_t errlen);
    /* The matmul precision in force. */
    nawal_precision (*get_precision)(const nawal_ops *o);
    /* How many independent shards of a batch are worth running at once
     * (CPU: its thread count; a GPU backend: 1). */
    int (*parallel_width)(const nawal_ops *o);
    /* Runs fn(ctx, i) for i in [0, n), concurrently where the backend can
     * (CPU: one thread per i, and the ops called inside run single-threaded). */
    void (*run_parallel)(const nawal_ops *o, int n, void (*fn)(void *ctx, int i), void *ctx);

    /* ---- graphs (optional: NULL where the backend has none, as on the CPU) ----
     * Between capture_begin and capture_end the ops called are recorded,
     * not run; capture_end returns a handle that graph_launch replays with
     * the same arguments (device buffers' contents as they are at launch),
     * or NULL when ending or instantiating the capture failed (its ops did
     * not run: run them again); an error inside an op is fatal as always.
     * Capture only a sequence of ops that ran before with the same shapes
     * (the backend allocates on first use), from the one thread that
     * drives the backend. graph_launch returns 0, or -1 without running
     * when the backend moved a buffer the graph points into since (capture
     * again). */
    int (*capture_begin)(const nawal_ops *o);
    void *(*capture_end)(const nawal_ops *o);
    int (*graph_launch)(const nawal_ops *o, void *graph);
    void (*graph_free)(const nawal_ops *o, void *graph);

    void *impl;                       /* backend private state */
};

/* The CPU backend (always present). threads <= 0 keeps OpenMP's default. */
const nawal_ops *nawal_ops_cpu(int threads);

/* Opens a backend by name: "cpu", "cuda", or "auto" (CUDA when its plugin and
 * a device are present, else CPU). Returns 0; NAWAL_OPS_NO_DEVICE when CUDA
 * was asked for and no usable GPU or driver is present; -1 for any other
 * failure (unknown name, plugin missing or broken). err says which. */
#define NAWAL_OPS_NO_DEVICE (-2)
int nawal_ops_open(const nawal_ops **out, const char *device, char *err, size_t errlen);

/* Parses a precision name and selects it on o: 0, or -1 with a message
 * (unknown name, or a precision the backend cannot run). */
int nawal_ops_set_precision_name(const nawal_ops *o, const char *name, char *err, size_t errlen);

/* Parses "fp32", "tf32" or "bf16"; 0 or -1. */
int nawal_precision_parse(const char *s, nawal_precision *out);
const char *nawal_precision_name(nawal_precision p);

/* A wrapper of `inner` that times every op between syncs (a breakdown of a
 * step, not a speed measurement); one profiled backend per process. */
const nawal_ops *nawal_ops_profiled(const nawal_ops *inner);
/* Prints the per-op totals divided by `steps` to f. */
void nawal_ops_profile_print(FILE *f, int steps);

/* Name of the matmul library the CPU backend uses, with its version. */
const char *nawal_ops_cpu_blas_name(void);

#ifdef __cplusplus
}
#endif

#endif
