/* matmul_bf16.c - the CPU backend's bf16 GEMMs (--precision bf16).
 *
 * The same arithmetic as the CUDA backend's bf16 matmuls: both operands
 * are rounded to bf16 (round to nearest even), the products accumulate in
 * fp32 and the output is fp32. (Only matmul_fwd/bwd: the CPU's attention
 * products stay fp32 where CUDA's bf16 mode runs them in tf32.) oneDNN's
 * matmul primitive runs them on AMX or AVX512-BF16 where the CPU has them
 * (brgemm kernels); cpu_bf16_supported refuses the mode where oneDNN would
 * fall back to its reference kernel.
 *
 * Each operand is cast into a dense bf16 copy in its stored layout (a
 * transposed operand is described to oneDNN by its strides, not
 * transposed here); the products of one call that read the same operand
 * (matmul_bwd's dout) share one copy. The casts are memory-bound and cost
 * about as much as the AMX products on the tiny model, so each operand is
 * read once. Primitives and workspaces (stream, scratchpad, the cast
 * buffers) come from dnnl_matmul.c; the casts run on the calling team's
 * OpenMP threads. */
#include "cpu_ops.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fp32 -> bf16, round to nearest even (subnormals too, as CUDA's
 * __float2bfloat16_rn; the AMX / AVX512-BF16 units then read subnormal bf16
 * inputs as zero); a NaN stays a quiet NaN, keeping its payload where CUDA
 * returns the canonical one. Branch-free, so the cast loops vectorise. */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

static void cast_run(uint16_t *restrict d, const float *restrict s, long n) {
    for (long i = 0; i < n; i++) d[i] = bf16_round(s[i]);
}

/* what one call has cast: an operand's source, stored shape and ld */
typedef struct {
    const float *src;
    long rows, cols, ld;
    uint16_t *buf;
} bf16_cast;

/* the dense bf16 copy of src (rows x cols, row-major with ld), cast once
 * per call and shared by the products that read the same operand */
static const uint16_t *operand(cpu_mm_ws *w, bf16_cast *casts, const float *src, long rows, long cols, long ld) {
    int i = 0;
    for (; i < CPU_MM_BUFFERS && casts[i].src; i++) {
        bf16_cast *c = &casts[i];
        if (c->src == src && c->rows == rows && c->cols == cols && c->ld == ld) return c->buf;
    }
    if (i == CPU_MM_BUFFERS) { fprintf(stderr, "nawal: more than %d bf16 operands in one call\n", CPU_MM_BUFFERS); abort(); }
    uint16_t *dst = cpu_mm_buffer(w, i, (size_t)rows * cols * sizeof(uint16_t));
    #pragma omp parallel for
    for (long r = 0; r < rows; r++) cast_run(dst + r * cols, src + r * ld, cols);
    casts[i] = (bf16_cast){ .src = src, .rows = rows, .cols = cols, .ld = ld, .buf = dst };
    return dst;
}

/* the matmul shape of C (M x N, ldc) [+]= op(A) op(B) over dense bf16 copies
 * in their stored layout (ta: A stored K x M; tb: B stored N x K) */
static cpu_mm_shape gemm_shape(long M, long N, long K, int ta, int tb, long ldc, int beta_one) {
    return (cpu_mm_shape){ .bf16 = 1, .batch = 1, .M = M, .N = N, .K = K,
                           .sa = { M * K, ta ? 1 : K, ta ? M : 1 }, .sb = { K * N, tb ? 1 : N, tb ? K : 1 },
                           .sc = { M * ldc, ldc, 1 }, .beta_one = beta_one };
}

static void run_one(cpu_mm_ws *w, bf16_cast *casts, const cpu_gemm_args *g) {
    if (g->M <= 0 || g->N <= 0) return;
    if (g->K <= 0) { /* an empty sum: C = beta C */
        if (g->beta == 0.0f)
            for (int i = 0; i < g->M; i++) memset(g->C + (size_t)i * g->ldc, 0, (size_t)g->N * sizeof(float));
        return;
    }
    if (g->beta != 0.0f && g->beta != 1.0f) {
        fprintf(stderr, "nawal: bf16 matmul supports beta 0 or 1 (got %g)\n", g->beta);
        abort();
    }
    int ta = g->ta == 'T' || g->ta == 't', tb = g->tb == 'T' || g->tb == 't';
    cpu_mm_shape sh = gemm_shape(g->M, g->N, g->K, ta, tb, g->ldc, g->beta == 1.0f);
    const uint16_t *a = operand(w, casts, g->A, ta ? g->K : g->M, ta ? g->M : g->K, g->lda);
    const uint16_t *b = operand(w, casts, g->B, tb ? g->N : g->K, tb ? g->K : g->N, g->ldb);
    cpu_mm_run(w, &sh, a, b, g->C);
}

void cpu_bf16_gemms(const cpu_gemm_args *g, int n) {
    cpu_mm_ws *w = cpu_mm_take();
    bf16_cast casts[CPU_MM_BUFFERS] = { { 0 } };
    for (int i = 0; i < n; i++) {
        run_one(w, casts, &g[i]);
        /* a product that writes what a later one reads would leave a stale
         * copy behind (no caller does): drop every copy whose source
         * overlaps the rows just written */
        const char *c0 = (const char *)g[i].C, *c1 = c0 + ((size_t)(g[i].M > 0 ? g[i].M - 1 : 0) * g[i].ldc + g[i].N) * 4;
        for (int j = 0; j < CPU_MM_BUFFERS; j++) {
            bf16_cast *c = &casts[j];
            if (!c->src) continue;
            const char *s0 = (const char *)c->src, *s1 = s0 + ((size_t)(c->rows - 1) * c->ld + c->cols) * 4;
            if (s0 < c1 && c0 < s1) c->src = NULL;
        }
    }
    cpu_mm_give(w);
}

/* oneDNN's choice for a small bf16 product: "brg:avx512_core_amx_bf16" and
 * the like run on the CPU's bf16 units; "ref:..." would be a scalar loop */
static int g_supported = -1;
static char g_impl[96];
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;
static void probe(void) {
    cpu_mm_shape sh = gemm_shape(64, 64, 64, 0, 0, 64, 0);
    cpu_mm_impl(&sh, g_impl, sizeof g_impl);
    g_supported = strncmp(g_impl, "ref", 3) != 0 && strncmp(g_impl, "none", 4) != 0 && strstr(g_impl, "bf16") != NULL;
}

int cpu_bf16_supported(const char **impl) {
    pthread_once(&g_probe_once, probe);
    if (impl) *impl = g_impl;
    return g_supported;
}
