/* cuda_backend.cu - the CUDA backend plugin's entry point: device selection,
 * memory, the stream, cuBLAS/cuBLASLt handles, and the nawal_ops table.
 *
 * libnawal_cuda.so exports two symbols, nawal_ops_cuda_abi (the ops.h
 * layout it was built for) and nawal_ops_cuda_open, which kernels/ops.c
 * looks up with dlopen. Everything runs on one non-blocking
 * stream in issue order; download and sumsq synchronise it because the host
 * reads their results. All ops are deterministic (no atomics anywhere), so
 * a rerun on the same GPU reproduces results bit for bit. */
#include "cuda_common.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cuda_fatal(const char *op, const char *call, const char *msg, const char *file, int line) {
    fprintf(stderr, "nawal cuda: %s: %s failed: %s (%s:%d)\n", op, call, msg, file, line);
    fflush(stderr);
    abort();
}

const char *cuda_blas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

static void *cu_alloc(const nawal_ops *o, size_t bytes) {
    /* The current device is per thread, and the thread computing may not be
     * the one that opened the backend (nawal-agent run trains on a worker
     * thread): make ours current here, as every computing thread allocates
     * (its model) before anything else. */
    if (cudaSetDevice(CUDA_STATE(o)->device) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 4) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear: out of memory is reported by returning NULL */
        return NULL;
    }
    return p;
}

static void cu_free(const nawal_ops *o, void *p) {
    if (!p) return;
    CUDA_CHECK("free", cudaStreamSynchronize(CUDA_STATE(o)->stream));
    CUDA_CHECK("free", cudaFree(p));
}

static void cu_upload(const nawal_ops *o, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    /* from pageable memory this returns once src has been staged, so the
     * caller may reuse src immediately */
    CUDA_CHECK("upload", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, CUDA_STATE(o)->stream));
}

static void cu_download(const nawal_ops *o, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cuda_state *s = CUDA_STATE(o);
    CUDA_CHECK("download", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK("download", cudaStreamSynchronize(s->stream));
}

static void cu_sync(const nawal_ops *o) { CUDA_CHECK("sync", cudaStreamSynchronize(CUDA_STATE(o)->stream)); }

void cuda_buffers_moving(cuda_state *s, const char *op, const char *what) {
    if (s->capturing) {
        char msg[160];
        snprintf(msg, sizeof msg, "the %s buffer had to grow during a graph capture (capture only shapes that ran before)", what);
        cuda_fatal(op, "graph capture", msg, __FILE__, __LINE__);
    }
    s->generation++;
}

void *cuda_scratch(const nawal_ops *o, size_t bytes) {
    cuda_state *s = CUDA_STATE(o);
    if (bytes <= s->scratch_bytes) return s->scratch;
    cuda_buffers_moving(s, "scratch", "scratch");
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 4;
    if (s->scratch) {
        CUDA_CHECK("scratch", cudaStreamSynchronize(s->stream));
        CUDA_CHECK("scratch", cudaFree(s->scratch));
    }
    CUDA_CHECK("scratch", cudaMalloc(&s->scratch, want));
    s->scratch_bytes = want;
    return s->scratch;
}

static int cu_parallel_width(const nawal_ops *o) { (void)o; return 1; }
static nawal_precision cu_get_precision(const nawal_ops *o) { return CUDA_STATE(o)->precision; }

/* one GPU stream: shards run one after another (parallel_width is 1) */
static void cu_run_parallel(const nawal_ops *o, int n, void (*fn)(void *ctx, int i), void *ctx) {
    (void)o;
    for (int i = 0; i < n; i++) fn(ctx, i);
}

static int cu_set_precision(const nawal_ops *o, nawal_precision p, char *err, size_t errlen) {
    cuda_state *s = CUDA_STATE(o);
    switch (p) {
    case NAWAL_PREC_FP32: s->compute = CUBLAS_COMPUTE_32F; break;
    case NAWAL_PREC_TF32: s->compute = CUBLAS_COMPUTE_32F_FAST_TF32; break;
    case NAWAL_PREC_BF16: s->compute = CUBLAS_COMPUTE_32F_FAST_16BF; break;
    default: snprintf(err, errlen, "unknown precision %d", (int)p); return -1;
    }
    if (p != NAWAL_PREC_FP32 && s->prop.major < 8) {
        /* (the plugin uses nothing from the host program: no nawal_precision_name here) */
        snprintf(err, errlen, "%s matmuls need compute capability 8.0 or newer (this GPU is %d.%d)",
                 p == NAWAL_PREC_TF32 ? "tf32" : "bf16", s->prop.major, s->prop.minor);
        s->compute = CUBLAS_COMPUTE_32F;
        return -1;
    }
    s->precision = p;
    return 0;
}

static cuda_state g_state;
static nawal_ops g_table;
static int g_open;

#define LT_WORKSPACE_BYTES ((size_t)32 << 20)
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)

/* the ops.h layout this plugin was built against (ops.c refuses a mismatch) */
extern "C" __attribute__((visibility("default"))) int nawal_ops_cuda_abi(void) { return NAWAL_OPS_ABI; }

extern "C" __attribute__((visibility("default"))) int nawal_ops_cuda_open(const nawal_ops **out, char *err,
                                                                          size_t errlen) {
    if (g_open) { *out = &g_table; return 0; }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, errlen, "no CUDA GPU available (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices");
        (void)cudaGetLastError();
        return NAWAL_OPS_NO_DEVICE;
    }
    cuda_state *s = &g_state;
    memset(s, 0, sizeof *s);
    const char *env = getenv("NAWAL_CUDA_DEVICE");
    s->device = env ? atoi(env) : 0;
    if (s->device < 0 || s->device >= count) {
        snprintf(err, errlen, "NAWAL_CUDA_DEVICE=%s but only %d CUDA device(s)", env, count);
        return -1;
    }
    const char *att = getenv("NAWAL_CUDA_ATTENTION");
    if (att && strcmp(att, "flash") && strcmp(att, "gemm")) {
        snprintf(err, errlen, "NAWAL_CUDA_ATTENTION=%s: expected flash or gemm", att);
        return -1;
    }
    CUDA_CHECK("open", cudaSetDevice(s->device));
    CUDA_CHECK("open", cudaGetDeviceProperties(&s->prop, s->device));
    CUDA_CHECK("open", cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    BLAS_CHECK("open", cublasCreate(&s->blas));
    BLAS_CHECK("open", cublasSetStream(s->blas, s->stream));
    CUDA_CHECK("open", cudaMalloc(&s->blas_workspace, BLAS_WORKSPACE_BYTES));
    BLAS_CHECK("open", cublasSetWorkspace(s->blas, s->blas_workspace, BLAS_WORKSPACE_BYTES));
    BLAS_CHECK("open", cublasLtCreate(&s->lt));
    s->lt_workspace_bytes = LT_WORKSPACE_BYTES;
    CUDA_CHECK("open", cudaMalloc(&s->lt_workspace, s->lt_workspace_bytes));
    CUDA_CHECK("open", cudaMallocHost((void **)&s->host_result, sizeof(double)));
    s->precision = NAWAL_PREC_FP32;
    s->compute = CUBLAS_COMPUTE_32F;

    nawal_ops *t = &g_table;
    memset(t, 0, sizeof *t);
    t->name = "cuda";
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    snprintf(t->device_desc, sizeof t->device_desc, "%.60s, %d SMs, cc %d.%d, %.0f GiB, CUDA %d.%d, cuBLASLt %zu",
             s->prop.name, s->prop.multiProcessorCount, s->prop.major, s->prop.minor,
             (double)s->prop.totalGlobalMem / (1 << 30), rt / 1000, (rt % 1000) / 10, cublasLtGetVersion());
    t->alloc = cu_alloc;
    t->free = cu_free;
    t->upload = cu_upload;
    t->download = cu_download;
    t->sync = cu_sync;
    t->fill = cuda_fill;
    t->copy = cuda_copy;
    t->axpy = cuda_axpy;
    t->scale = cuda_scale;
    t->sumsq = cuda_sumsq;
    t->matmul_fwd = cuda_matmul_fwd;
    t->matmul_bwd = cuda_matmul_bwd;
    t->layernorm_fwd = cuda_layernorm_fwd;
    t->layernorm_bwd = cuda_layernorm_bwd;
    t->attention_fwd = cuda_attention_fwd;
    t->attention_bwd = cuda_attention_bwd;
    t->gelu_fwd = cuda_gelu_fwd;
    t->gelu_bwd = cuda_gelu_bwd;
    t->residual_fwd = cuda_residual_fwd;
    t->embedding_fwd = cuda_embedding_fwd;
    t->embedding_bwd = cuda_embedding_bwd;
    t->softmax_xent = cuda_softmax_xent;
    t->pe_norm_linear = cuda_pe_norm_linear;
    t->pe_norm_bias = cuda_pe_norm_bias;
    t->pe_bound_linear = cuda_pe_bound_linear;
    t->pe_norm_layernorm = cuda_pe_norm_layernorm;
    t->pe_norm_rows = cuda_pe_norm_rows;
    t->pe_norm_tied = cuda_pe_norm_tied;
    t->pe_grad_linear = cuda_pe_grad_linear;
    t->pe_grad_layernorm = cuda_pe_grad_layernorm;
    t->pe_sum = cuda_pe_sum;
    t->scale_examples = cuda_scale_examples;
    t->add_noise = cuda_add_noise;
    t->adamw = cuda_adamw;
    t->sgd = cuda_sgd;
    t->topk_select = cuda_topk_select;
    t->capture_begin = cuda_capture_begin;
    t->capture_end = cuda_capture_end;
    t->graph_launch = cuda_graph_launch;
    t->graph_free = cuda_graph_free;
    t->set_precision = cu_set_precision;
    t->get_precision = cu_get_precision;
    t->parallel_width = cu_parallel_width;
    t->run_parallel = cu_run_parallel;
    t->impl = s;
    g_open = 1;
    *out = t;
    return 0;
}
