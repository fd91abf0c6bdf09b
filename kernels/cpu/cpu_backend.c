/* cpu_backend.c - the CPU backend's memory, vector basics and op table.
 * Buffers are 64-byte aligned host memory; ops are spread over the files of
 * kernels/cpu/ and gathered here into the nawal_ops table. */
#include "cpu_ops.h"
#include <dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(const nawal_ops *o, size_t bytes) {
    (void)o;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64) != 0) return NULL;
    return p;
}
static void cpu_free(const nawal_ops *o, void *p) { (void)o; free(p); }
static void cpu_upload(const nawal_ops *o, void *dst, const void *src, size_t bytes) { (void)o; if (bytes) memcpy(dst, src, bytes); }
static void cpu_download(const nawal_ops *o, void *dst, const void *src, size_t bytes) { (void)o; if (bytes) memcpy(dst, src, bytes); }
static void cpu_sync(const nawal_ops *o) { (void)o; }

static void fill_range(float *restrict x, float value, size_t n) { for (size_t i = 0; i < n; i++) x[i] = value; }
static void axpy_range(float *restrict y, float a, const float *restrict x, size_t n) { for (size_t i = 0; i < n; i++) y[i] += a * x[i]; }
static void scale_range(float *restrict x, float a, size_t n) { for (size_t i = 0; i < n; i++) x[i] *= a; }

void cpu_fill(const nawal_ops *o, float *x, float value, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        fill_range(x + lo, value, hi - lo);
    }
}
void cpu_copy(const nawal_ops *o, float *dst, const float *src, size_t n) { (void)o; if (n) memmove(dst, src, n * sizeof(float)); }
void cpu_axpy(const nawal_ops *o, float *y, float a, const float *x, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        axpy_range(y + lo, a, x + lo, hi - lo);
    }
}
void cpu_scale(const nawal_ops *o, float *x, float a, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        scale_range(x + lo, a, hi - lo);
    }
}

/* Fixed 4096-element chunks summed in double, partials added in order: the
 * result does not depend on the thread count. */
#define SUMSQ_CHUNK 4096
double cpu_sumsq(const nawal_ops *o, const float *x, size_t n) {
    (void)o;
    size_t nchunk = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    double stackbuf[64];
    double *part = nchunk <= 64 ? stackbuf : malloc(nchunk * sizeof(double));
    if (!part) { fprintf(stderr, "nawal: out of memory in sumsq\n"); abort(); }
    #pragma omp parallel for
    for (size_t c = 0; c < nchunk; c++) {
        size_t i0 = c * SUMSQ_CHUNK, i1 = i0 + SUMSQ_CHUNK < n ? i0 + SUMSQ_CHUNK : n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[c] = s;
    }
    double total = 0.0;
    for (size_t c = 0; c < nchunk; c++) total += part[c];
    if (part != stackbuf) free(part);
    return total;
}

static int cpu_parallel_width(const nawal_ops *o) { (void)o; return omp_get_max_threads(); }

/* Nested parallelism is off (libgomp's default), so the ops that fn calls
 * run on the calling thread, and oneDNN runs its GEMMs sequentially too. */
static void cpu_run_parallel(const nawal_ops *o, int n, void (*fn)(void *ctx, int i), void *ctx) {
    (void)o;
    #pragma omp parallel for schedule(static, 1) num_threads(n)
    for (int i = 0; i < n; i++) fn(ctx, i);
}

/* The one CPU table's state: the precision is process-wide. */
static cpu_state g_cpu_state = { .precision = NAWAL_PREC_FP32 };

nawal_precision cpu_precision(const nawal_ops *o) { return ((const cpu_state *)o->impl)->precision; }

static int cpu_set_precision(const nawal_ops *o, nawal_precision p, char *err, size_t errlen) {
    cpu_state *s = o->impl;
    const char *impl;
    switch (p) {
    case NAWAL_PREC_FP32: s->precision = p; return 0;
    case NAWAL_PREC_BF16:
        if (!cpu_bf16_supported(&impl)) {
            snprintf(err, errlen, "this CPU has no bf16 matmul units (oneDNN offers %s for bf16; isa %s): use fp32", impl,
                     cpu_isa_name());
            return -1;
        }
        s->precision = p;
        return 0;
    default:
        snprintf(err, errlen, "the CPU backend runs fp32 or bf16 matmuls (asked for %s: a GPU precision)",
                 nawal_precision_name(p));
        return -1;
    }
}

static nawal_ops cpu_table = {
    .name = "cpu",
    .alloc = cpu_alloc, .free = cpu_free, .upload = cpu_upload, .download = cpu_download, .sync = cpu_sync,
    .fill = cpu_fill, .copy = cpu_copy, .axpy = cpu_axpy, .scale = cpu_scale, .sumsq = cpu_sumsq,
    .matmul_fwd = cpu_matmul_fwd, .matmul_bwd = cpu_matmul_bwd,
    .layernorm_fwd = cpu_layernorm_fwd, .layernorm_bwd = cpu_layernorm_bwd,
    .attention_fwd = cpu_attention_fwd, .attention_bwd = cpu_attention_bwd,
    .gelu_fwd = cpu_gelu_fwd, .gelu_bwd = cpu_gelu_bwd, .residual_fwd = cpu_residual_fwd,
    .embedding_fwd = cpu_embedding_fwd, .embedding_bwd = cpu_embedding_bwd,
    .softmax_xent = cpu_softmax_xent, .adamw = cpu_adamw, .sgd = cpu_sgd,
    .topk_select = cpu_topk_select,
    .pe_norm_linear = cpu_pe_norm_linear, .pe_bound_linear = cpu_pe_bound_linear, .pe_norm_bias = cpu_pe_norm_bias, .pe_norm_layernorm = cpu_pe_norm_layernorm,
    .pe_norm_rows = cpu_pe_norm_rows, .pe_norm_tied = cpu_pe_norm_tied,
    .pe_grad_linear = cpu_pe_grad_linear, .pe_grad_layernorm = cpu_pe_grad_layernorm, .pe_sum = cpu_pe_sum,
    .scale_examples = cpu_scale_examples, .add_noise = cpu_add_noise,
    .set_precision = cpu_set_precision, .get_precision = cpu_precision, .parallel_width = cpu_parallel_width,
    .run_parallel = cpu_run_parallel,
    .impl = &g_cpu_state,
};

const nawal_ops *nawal_ops_cpu(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    omp_set_max_active_levels(1);
    snprintf(cpu_table.device_desc, sizeof cpu_table.device_desc, "CPU, %d OpenMP threads, %s",
             omp_get_max_threads(), nawal_ops_cpu_blas_name());
    return &cpu_table;
}

const char *cpu_isa_name(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2: return "avx2";
    default: return "other";
    }
}

const char *nawal_ops_cpu_blas_name(void) {
    static char buf[96];
    const dnnl_version_t *v = dnnl_version();
    snprintf(buf, sizeof buf, "oneDNN %d.%d.%d sgemm (isa %s)", v->major, v->minor, v->patch, cpu_isa_name());
    return buf;
}
