/* matmul_bf16.c - the CPU backend's bf16 GEMM (--precision bf16).
 *
 * The same arithmetic as the CUDA backend's bf16 mode: both operands are
 * rounded to bf16 (round to nearest even), the products accumulate in fp32
 * and the output is fp32. oneDNN's matmul primitive runs them on AMX or
 * AVX512-BF16 where the CPU has them (brgemm kernels); cpu_bf16_supported
 * refuses the mode where oneDNN would fall back to its reference kernel.
 *
 * op(A) and op(B) are cast (transposed where asked) into contiguous
 * row-major bf16 copies, so every product is one plain M x K by K x N
 * matmul. Primitives are created once per (M, N, K, ldc, beta) and kept.
 * A call borrows a workspace (CPU stream, cast buffers, scratchpad) from a
 * small pool, so the concurrent calls of run_parallel's threads never share
 * one; the casts run on the calling team's OpenMP threads. */
#include "cpu_ops.h"
#include <dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fp32 -> bf16, round to nearest even (subnormals too, as CUDA's
 * __float2bfloat16_rn); a NaN stays a quiet NaN. Branch-free, so the cast
 * loops vectorise. */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

float cpu_bf16_round(float f) {
    uint32_t u = (uint32_t)bf16_round(f) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

static void dnnl_fail(const char *what, dnnl_status_t st) {
    fprintf(stderr, "nawal: oneDNN %s failed with status %d\n", what, (int)st);
    abort();
}
#define DNNL_CHECK(what, call) do { dnnl_status_t st_ = (call); if (st_ != dnnl_success) dnnl_fail(what, st_); } while (0)

/* ---- engine ---- */
static dnnl_engine_t g_engine;
static pthread_once_t g_engine_once = PTHREAD_ONCE_INIT;
static void engine_init(void) { DNNL_CHECK("engine_create", dnnl_engine_create(&g_engine, dnnl_cpu, 0)); }
static dnnl_engine_t engine(void) {
    pthread_once(&g_engine_once, engine_init);
    return g_engine;
}

/* ---- primitive cache ----
 * A grow-only list: a model has a handful of shapes, and a plan's address
 * stays valid for concurrent callers while others are added. */
typedef struct bf16_plan {
    long M, N, K, ldc;
    int beta_one;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c, scratch;
    struct bf16_plan *next;
} bf16_plan;

static bf16_plan *g_plans;
static pthread_mutex_t g_plan_lock = PTHREAD_MUTEX_INITIALIZER;

/* primitive descriptor of C (M x N, ldc, fp32) [+]= A (M x K) B (K x N), bf16 row-major;
 * NULL with *st set when oneDNN cannot create one */
static dnnl_primitive_desc_t plan_pd(long M, long N, long K, long ldc, int beta_one, dnnl_status_t *st) {
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t da = { M, K }, db = { K, N }, dc = { M, N }, sc = { ldc, 1 };
    DNNL_CHECK("memory_desc (A)", dnnl_memory_desc_init_by_tag(&a, 2, da, dnnl_bf16, dnnl_ab));
    DNNL_CHECK("memory_desc (B)", dnnl_memory_desc_init_by_tag(&b, 2, db, dnnl_bf16, dnnl_ab));
    DNNL_CHECK("memory_desc (C)", dnnl_memory_desc_init_by_strides(&c, 2, dc, dnnl_f32, sc));
    dnnl_matmul_desc_t md;
    DNNL_CHECK("matmul_desc", dnnl_matmul_desc_init(&md, &a, &b, NULL, &c));
    dnnl_primitive_attr_t attr;
    DNNL_CHECK("attr_create", dnnl_primitive_attr_create(&attr));
    DNNL_CHECK("scratchpad_mode", dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (beta_one) {
        dnnl_post_ops_t po;
        DNNL_CHECK("post_ops_create", dnnl_post_ops_create(&po));
        DNNL_CHECK("post_ops_append_sum", dnnl_post_ops_append_sum(po, 1.0f));
        DNNL_CHECK("set_post_ops", dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd = NULL;
    *st = dnnl_primitive_desc_create(&pd, &md, attr, engine(), NULL);
    dnnl_primitive_attr_destroy(attr);
    return *st == dnnl_success ? pd : NULL;
}

static const bf16_plan *get_plan(long M, long N, long K, long ldc, int beta_one) {
    pthread_mutex_lock(&g_plan_lock);
    bf16_plan *p = g_plans;
    while (p && !(p->M == M && p->N == N && p->K == K && p->ldc == ldc && p->beta_one == beta_one)) p = p->next;
    if (!p) {
        dnnl_status_t st;
        dnnl_primitive_desc_t pd = plan_pd(M, N, K, ldc, beta_one, &st);
        if (!pd) dnnl_fail("bf16 matmul primitive_desc_create", st);
        p = calloc(1, sizeof *p);
        if (!p) { fprintf(stderr, "nawal: out of memory for a bf16 matmul plan\n"); abort(); }
        *p = (bf16_plan){ .M = M, .N = N, .K = K, .ldc = ldc, .beta_one = beta_one, .next = g_plans };
        p->a = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        p->b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->c = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        p->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        DNNL_CHECK("primitive_create", dnnl_primitive_create(&p->prim, pd));
        dnnl_primitive_desc_destroy(pd);
        g_plans = p;
    }
    pthread_mutex_unlock(&g_plan_lock);
    return p;
}

/* ---- workspaces ---- */
typedef struct {
    int busy;
    dnnl_stream_t stream;
    uint16_t *a, *b;
    size_t a_cap, b_cap;     /* elements */
    void *scratch;
    size_t scratch_cap;      /* bytes */
} bf16_ws;

#define MAX_WS 64
static bf16_ws g_ws[MAX_WS];
static pthread_mutex_t g_ws_lock = PTHREAD_MUTEX_INITIALIZER;

static bf16_ws *ws_take(void) {
    pthread_mutex_lock(&g_ws_lock);
    for (int i = 0; i < MAX_WS; i++) {
        if (!g_ws[i].busy) {
            g_ws[i].busy = 1;
            pthread_mutex_unlock(&g_ws_lock);
            if (!g_ws[i].stream)
                DNNL_CHECK("stream_create", dnnl_stream_create(&g_ws[i].stream, engine(), dnnl_stream_default_flags));
            return &g_ws[i];
        }
    }
    pthread_mutex_unlock(&g_ws_lock);
    fprintf(stderr, "nawal: more than %d concurrent bf16 matmuls\n", MAX_WS);
    abort();
}

static void ws_give(bf16_ws *w) {
    pthread_mutex_lock(&g_ws_lock);
    w->busy = 0;
    pthread_mutex_unlock(&g_ws_lock);
}

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    free(p);
    size_t c = need + need / 4;
    void *q = NULL;
    if (posix_memalign(&q, 64, c * elem > 0 ? c * elem : 64) != 0) {
        fprintf(stderr, "nawal: out of memory for bf16 matmul operands (%zu bytes)\n", c * elem);
        abort();
    }
    *cap = c;
    return q;
}

static void cast_run(uint16_t *restrict d, const float *restrict s, long n) {
    for (long i = 0; i < n; i++) d[i] = bf16_round(s[i]);
}

/* dst (rows x cols, row-major, bf16) = bf16(src), src row-major with ld;
 * trans: dst[r][c] = src[c * ld + r] (src is cols x rows) */
static void cast_rows(uint16_t *dst, const float *src, long rows, long cols, long ld, int trans) {
    if (!trans) {
        #pragma omp parallel for
        for (long r = 0; r < rows; r++) cast_run(dst + r * cols, src + r * ld, cols);
        return;
    }
    /* 32 x 32 tiles: each source row's run is cast contiguously into a tile,
     * then the tile is written out transposed, whole cache lines both ways */
    long rt = (rows + 31) / 32, ct = (cols + 31) / 32;
    #pragma omp parallel for
    for (long t = 0; t < rt * ct; t++) {
        long r0 = t / ct * 32, c0 = t % ct * 32;
        long nr = rows - r0 < 32 ? rows - r0 : 32, nc = cols - c0 < 32 ? cols - c0 : 32;
        uint16_t tile[32][32];
        for (long c = 0; c < nc; c++) cast_run(tile[c], src + (c0 + c) * ld + r0, nr);
        for (long r = 0; r < nr; r++)
            for (long c = 0; c < nc; c++) dst[(r0 + r) * cols + c0 + c] = tile[c][r];
    }
}

void cpu_bf16_gemm(char ta, char tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                   float beta, float *Cm, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* an empty sum: C = beta C */
        if (beta == 0.0f)
            for (int i = 0; i < M; i++) memset(Cm + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    if (beta != 0.0f && beta != 1.0f) {
        fprintf(stderr, "nawal: bf16 matmul supports beta 0 or 1 (got %g)\n", beta);
        abort();
    }
    const bf16_plan *p = get_plan(M, N, K, ldc, beta == 1.0f);
    bf16_ws *w = ws_take();
    w->a = grow(w->a, &w->a_cap, (size_t)M * K, sizeof(uint16_t));
    w->b = grow(w->b, &w->b_cap, (size_t)K * N, sizeof(uint16_t));
    size_t sbytes = dnnl_memory_desc_get_size(&p->scratch);
    w->scratch = grow(w->scratch, &w->scratch_cap, sbytes, 1);
    cast_rows(w->a, A, M, K, lda, ta == 'T' || ta == 't');
    cast_rows(w->b, B, K, N, ldb, tb == 'T' || tb == 't');
    dnnl_memory_t am, bm, cm, sm;
    dnnl_engine_t e = engine();
    DNNL_CHECK("memory_create (A)", dnnl_memory_create(&am, &p->a, e, w->a));
    DNNL_CHECK("memory_create (B)", dnnl_memory_create(&bm, &p->b, e, w->b));
    DNNL_CHECK("memory_create (C)", dnnl_memory_create(&cm, &p->c, e, Cm));
    DNNL_CHECK("memory_create (scratchpad)", dnnl_memory_create(&sm, &p->scratch, e, w->scratch));
    dnnl_exec_arg_t args[4] = {
        { DNNL_ARG_SRC, am }, { DNNL_ARG_WEIGHTS, bm }, { DNNL_ARG_DST, cm }, { DNNL_ARG_SCRATCHPAD, sm },
    };
    DNNL_CHECK("bf16 matmul execute", dnnl_primitive_execute(p->prim, w->stream, 4, args));
    DNNL_CHECK("stream_wait", dnnl_stream_wait(w->stream));
    dnnl_memory_destroy(am);
    dnnl_memory_destroy(bm);
    dnnl_memory_destroy(cm);
    dnnl_memory_destroy(sm);
    ws_give(w);
}

/* oneDNN's choice for a small bf16 product: "brg:avx512_core_amx_bf16" and
 * the like run on the CPU's bf16 units; "ref:..." would be a scalar loop */
static int g_supported = -1;
static char g_impl[96];
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;
static void probe(void) {
    dnnl_status_t st;
    dnnl_primitive_desc_t pd = plan_pd(64, 64, 64, 64, 0, &st);
    if (!pd) {
        snprintf(g_impl, sizeof g_impl, "none (status %d)", (int)st);
        g_supported = 0;
        return;
    }
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) impl = "unknown";
    snprintf(g_impl, sizeof g_impl, "%s", impl);
    g_supported = strncmp(impl, "ref", 3) != 0 && strstr(impl, "bf16") != NULL;
    dnnl_primitive_desc_destroy(pd);
}

int cpu_bf16_supported(const char **impl) {
    pthread_once(&g_probe_once, probe);
    if (impl) *impl = g_impl;
    return g_supported;
}
