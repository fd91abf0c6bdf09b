/* matmul_bf16.c - the CPU backend's bf16 GEMMs (--precision bf16).
 *
 * The same arithmetic as the CUDA backend's bf16 matmuls: both operands
 * are rounded to bf16 (round to nearest even), the products accumulate in
 * fp32 and the output is fp32. (Only matmul_fwd/bwd: the CPU's attention
 * products stay fp32 where CUDA's bf16 mode runs them in tf32.) oneDNN's matmul primitive runs them on AMX or
 * AVX512-BF16 where the CPU has them (brgemm kernels); cpu_bf16_supported
 * refuses the mode where oneDNN would fall back to its reference kernel.
 *
 * Each operand is cast into a dense bf16 copy in its stored layout (a
 * transposed operand is described to oneDNN by its strides, not
 * transposed here); the products of one call that read the same operand
 * (matmul_bwd's dout) share one copy. The casts are memory-bound and cost
 * about as much as the AMX products on the tiny model, so each operand is
 * read once. Primitives are created once per shape, layout and beta and
 * kept. A call borrows a workspace (CPU stream, cast buffers, scratchpad)
 * from a small pool, so the concurrent calls of run_parallel's threads
 * never share one; the casts run on the calling team's OpenMP threads. */
#include "cpu_ops.h"
#include <dnnl.h>
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
    int ta, tb, beta_one;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c, scratch;
    struct bf16_plan *next;
} bf16_plan;

static bf16_plan *g_plans;
static pthread_mutex_t g_plan_lock = PTHREAD_MUTEX_INITIALIZER;

/* primitive descriptor of C (M x N, ldc, fp32) [+]= op(A) (M x K) op(B) (K x N)
 * with A, B dense bf16 in their stored layout (ta: A stored K x M; tb: B
 * stored N x K); NULL with *st set when oneDNN cannot create one */
static dnnl_primitive_desc_t plan_pd(long M, long N, long K, int ta, int tb, long ldc, int beta_one, dnnl_status_t *st) {
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t da = { M, K }, db = { K, N }, dc = { M, N }, sc = { ldc, 1 };
    dnnl_dims_t sa = { ta ? 1 : K, ta ? M : 1 }, sb = { tb ? 1 : N, tb ? K : 1 };
    DNNL_CHECK("memory_desc (A)", dnnl_memory_desc_init_by_strides(&a, 2, da, dnnl_bf16, sa));
    DNNL_CHECK("memory_desc (B)", dnnl_memory_desc_init_by_strides(&b, 2, db, dnnl_bf16, sb));
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

static const bf16_plan *get_plan(long M, long N, long K, int ta, int tb, long ldc, int beta_one) {
    pthread_mutex_lock(&g_plan_lock);
    bf16_plan *p = g_plans;
    while (p && !(p->M == M && p->N == N && p->K == K && p->ta == ta && p->tb == tb && p->ldc == ldc &&
                  p->beta_one == beta_one))
        p = p->next;
    if (!p) {
        dnnl_status_t st;
        dnnl_primitive_desc_t pd = plan_pd(M, N, K, ta, tb, ldc, beta_one, &st);
        if (!pd) dnnl_fail("bf16 matmul primitive_desc_create", st);
        p = calloc(1, sizeof *p);
        if (!p) { fprintf(stderr, "nawal: out of memory for a bf16 matmul plan\n"); abort(); }
        *p = (bf16_plan){ .M = M, .N = N, .K = K, .ldc = ldc, .ta = ta, .tb = tb, .beta_one = beta_one, .next = g_plans };
        p->a = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        p->b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->c = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        p->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
            !strncmp(impl, "ref", 3)) { /* the probe's shape got a bf16 kernel; this one did not */
            static int warned;
            if (!warned++)
                fprintf(stderr, "nawal: warning: oneDNN runs the bf16 product %ldx%ldx%ld (ta %d tb %d) with its slow "
                                "reference kernel %s\n", M, N, K, ta, tb, impl);
        }
        DNNL_CHECK("primitive_create", dnnl_primitive_create(&p->prim, pd));
        dnnl_primitive_desc_destroy(pd);
        g_plans = p;
    }
    pthread_mutex_unlock(&g_plan_lock);
    return p;
}

/* ---- workspaces ---- */
#define MAX_CASTS 4 /* operands of one call: two products, two each */
typedef struct {
    const float *src;        /* what was cast, its stored shape and ld */
    long rows, cols, ld;
    uint16_t *buf;
    size_t cap;              /* elements */
} bf16_cast;

typedef struct {
    int busy;
    dnnl_stream_t stream;
    bf16_cast cast[MAX_CASTS];
    void *scratch;
    size_t scratch_cap;      /* bytes */
} bf16_ws;

/* more than the threads that can call at once (run_parallel's shards);
 * a caller beyond that waits for a free one */
#define MAX_WS 64
static bf16_ws g_ws[MAX_WS];
static pthread_mutex_t g_ws_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_ws_free = PTHREAD_COND_INITIALIZER;

static bf16_ws *ws_take(void) {
    pthread_mutex_lock(&g_ws_lock);
    for (;;) {
        for (int i = 0; i < MAX_WS; i++) {
            if (!g_ws[i].busy) {
                g_ws[i].busy = 1;
                pthread_mutex_unlock(&g_ws_lock);
                if (!g_ws[i].stream)
                    DNNL_CHECK("stream_create", dnnl_stream_create(&g_ws[i].stream, engine(), dnnl_stream_default_flags));
                return &g_ws[i];
            }
        }
        pthread_cond_wait(&g_ws_free, &g_ws_lock);
    }
}

static void ws_give(bf16_ws *w) {
    for (int i = 0; i < MAX_CASTS; i++) w->cast[i].src = NULL;
    pthread_mutex_lock(&g_ws_lock);
    w->busy = 0;
    pthread_cond_signal(&g_ws_free);
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

/* the dense bf16 copy of src (rows x cols, row-major with ld): one cast per
 * call, shared by the products that read the same operand */
static const uint16_t *operand(bf16_ws *w, const float *src, long rows, long cols, long ld) {
    int i = 0;
    for (; i < MAX_CASTS && w->cast[i].src; i++) {
        bf16_cast *c = &w->cast[i];
        if (c->src == src && c->rows == rows && c->cols == cols && c->ld == ld) return c->buf;
    }
    if (i == MAX_CASTS) { fprintf(stderr, "nawal: more than %d bf16 operands in one call\n", MAX_CASTS); abort(); }
    bf16_cast *c = &w->cast[i];
    c->buf = grow(c->buf, &c->cap, (size_t)rows * cols, sizeof(uint16_t));
    uint16_t *dst = c->buf;
    #pragma omp parallel for
    for (long r = 0; r < rows; r++) cast_run(dst + r * cols, src + r * ld, cols);
    *c = (bf16_cast){ .src = src, .rows = rows, .cols = cols, .ld = ld, .buf = dst, .cap = c->cap };
    return dst;
}

static void run_one(bf16_ws *w, const cpu_gemm_args *g) {
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
    const bf16_plan *p = get_plan(g->M, g->N, g->K, ta, tb, g->ldc, g->beta == 1.0f);
    const uint16_t *a = operand(w, g->A, ta ? g->K : g->M, ta ? g->M : g->K, g->lda);
    const uint16_t *b = operand(w, g->B, tb ? g->N : g->K, tb ? g->K : g->N, g->ldb);
    w->scratch = grow(w->scratch, &w->scratch_cap, dnnl_memory_desc_get_size(&p->scratch), 1);
    dnnl_memory_t am, bm, cm, sm;
    dnnl_engine_t e = engine();
    DNNL_CHECK("memory_create (A)", dnnl_memory_create(&am, &p->a, e, (void *)a));
    DNNL_CHECK("memory_create (B)", dnnl_memory_create(&bm, &p->b, e, (void *)b));
    DNNL_CHECK("memory_create (C)", dnnl_memory_create(&cm, &p->c, e, g->C));
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
}

void cpu_bf16_gemms(const cpu_gemm_args *g, int n) {
    bf16_ws *w = ws_take();
    for (int i = 0; i < n; i++) {
        run_one(w, &g[i]);
        /* a product that writes what a later one reads would leave a stale
         * copy behind (no caller does): drop every copy whose source
         * overlaps the rows just written */
        const char *c0 = (const char *)g[i].C, *c1 = c0 + ((size_t)(g[i].M > 0 ? g[i].M - 1 : 0) * g[i].ldc + g[i].N) * 4;
        for (int j = 0; j < MAX_CASTS; j++) {
            bf16_cast *c = &w->cast[j];
            if (!c->src) continue;
            const char *s0 = (const char *)c->src, *s1 = s0 + ((size_t)(c->rows - 1) * c->ld + c->cols) * 4;
            if (s0 < c1 && c0 < s1) c->src = NULL;
        }
    }
    ws_give(w);
}

/* oneDNN's choice for a small bf16 product: "brg:avx512_core_amx_bf16" and
 * the like run on the CPU's bf16 units; "ref:..." would be a scalar loop */
static int g_supported = -1;
static char g_impl[96];
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;
static void probe(void) {
    dnnl_status_t st;
    dnnl_primitive_desc_t pd = plan_pd(64, 64, 64, 0, 0, 64, 0, &st);
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
