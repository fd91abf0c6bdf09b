/* dnnl_matmul.c - oneDNN matmul primitives for the CPU backend.
 *
 * One primitive per shape (cpu_mm_shape: data type, batch, sizes, strides,
 * beta), created on first use and kept in a grow-only list, so a plan's
 * address stays valid for concurrent callers while others are added. A
 * caller borrows a workspace (CPU stream, scratchpad, operand buffers) from
 * a small pool, so the concurrent calls of run_parallel's threads never
 * share one; a caller beyond the pool's size waits for a free one. Used by
 * matmul_bf16.c (bf16 products on AMX / AVX512-BF16) and dp.c (the ghost
 * norms' per-example Gram matrices, one batched fp32 product per layer). */
#include "cpu_ops.h"
#include <dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- plans ---- */
typedef struct mm_plan {
    cpu_mm_shape s;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c, scratch;
    struct mm_plan *next;
} mm_plan;

static mm_plan *g_plans;
static pthread_mutex_t g_plan_lock = PTHREAD_MUTEX_INITIALIZER;

/* primitive descriptor for shape s; NULL with *st set when oneDNN has none */
static dnnl_primitive_desc_t plan_pd(const cpu_mm_shape *s, dnnl_status_t *st) {
    int nd = s->batch > 1 ? 3 : 2, o = 3 - nd; /* 2-D: the row and column entries only */
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t da = { 0 }, db = { 0 }, dc = { 0 }, sa = { 0 }, sb = { 0 }, sc = { 0 };
    const long ka[3] = { s->batch, s->M, s->K }, kb[3] = { s->batch, s->K, s->N }, kc[3] = { s->batch, s->M, s->N };
    for (int i = 0; i < nd; i++) {
        da[i] = ka[i + o], db[i] = kb[i + o], dc[i] = kc[i + o];
        sa[i] = s->sa[i + o], sb[i] = s->sb[i + o], sc[i] = s->sc[i + o];
    }
    dnnl_data_type_t ab = s->bf16 ? dnnl_bf16 : dnnl_f32;
    DNNL_CHECK("memory_desc (A)", dnnl_memory_desc_init_by_strides(&a, nd, da, ab, sa));
    DNNL_CHECK("memory_desc (B)", dnnl_memory_desc_init_by_strides(&b, nd, db, ab, sb));
    DNNL_CHECK("memory_desc (C)", dnnl_memory_desc_init_by_strides(&c, nd, dc, dnnl_f32, sc));
    dnnl_matmul_desc_t md;
    DNNL_CHECK("matmul_desc", dnnl_matmul_desc_init(&md, &a, &b, NULL, &c));
    dnnl_primitive_attr_t attr;
    DNNL_CHECK("attr_create", dnnl_primitive_attr_create(&attr));
    DNNL_CHECK("scratchpad_mode", dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (s->beta_one) {
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

static const char *pd_impl(dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    return dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl ? impl : "unknown";
}

static const mm_plan *get_plan(const cpu_mm_shape *s) {
    pthread_mutex_lock(&g_plan_lock);
    mm_plan *p = g_plans;
    while (p && memcmp(&p->s, s, sizeof *s)) p = p->next; /* all longs: no padding to compare */
    if (!p) {
        dnnl_status_t st;
        dnnl_primitive_desc_t pd = plan_pd(s, &st);
        if (!pd) dnnl_fail(s->bf16 ? "bf16 matmul primitive_desc_create" : "matmul primitive_desc_create", st);
        if (!strncmp(pd_impl(pd), "ref", 3)) { /* a scalar loop: say so once */
            static int warned;
            if (!warned++)
                fprintf(stderr, "nawal: warning: oneDNN runs the %s product %ldx%ldx%ldx%ld with its slow reference kernel %s\n",
                        s->bf16 ? "bf16" : "fp32", s->batch, s->M, s->N, s->K, pd_impl(pd));
        }
        p = calloc(1, sizeof *p);
        if (!p) { fprintf(stderr, "nawal: out of memory for a matmul plan\n"); abort(); }
        p->s = *s;
        p->a = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        p->b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->c = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        p->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        DNNL_CHECK("primitive_create", dnnl_primitive_create(&p->prim, pd));
        dnnl_primitive_desc_destroy(pd);
        p->next = g_plans;
        g_plans = p;
    }
    pthread_mutex_unlock(&g_plan_lock);
    return p;
}

/* ---- workspaces ---- */
struct cpu_mm_ws {
    int busy;
    dnnl_stream_t stream;
    void *buf[CPU_MM_BUFFERS];
    size_t cap[CPU_MM_BUFFERS]; /* bytes */
    void *scratch;
    size_t scratch_cap;
};

/* more than the threads that can call at once (run_parallel's shards) */
#define MAX_WS 64
static cpu_mm_ws g_ws[MAX_WS];
static pthread_mutex_t g_ws_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_ws_free = PTHREAD_COND_INITIALIZER;

cpu_mm_ws *cpu_mm_take(void) {
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

void cpu_mm_give(cpu_mm_ws *w) {
    pthread_mutex_lock(&g_ws_lock);
    w->busy = 0;
    pthread_cond_signal(&g_ws_free);
    pthread_mutex_unlock(&g_ws_lock);
}

/* p grown to at least need bytes (contents not kept), 64-byte aligned */
static void *grow(void *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    free(p);
    size_t c = (need + need / 4 + 63) / 64 * 64;
    void *q = NULL;
    if (posix_memalign(&q, 64, c) != 0) {
        fprintf(stderr, "nawal: out of memory for matmul operands (%zu bytes)\n", c);
        abort();
    }
    *cap = c;
    return q;
}

void *cpu_mm_buffer(cpu_mm_ws *w, int slot, size_t bytes) {
    return w->buf[slot] = grow(w->buf[slot], &w->cap[slot], bytes ? bytes : 64);
}

void cpu_mm_run(cpu_mm_ws *w, const cpu_mm_shape *s, const void *A, const void *B, float *C) {
    const mm_plan *p = get_plan(s);
    w->scratch = grow(w->scratch, &w->scratch_cap, dnnl_memory_desc_get_size(&p->scratch) + 64);
    dnnl_memory_t am, bm, cm, sm;
    dnnl_engine_t e = engine();
    DNNL_CHECK("memory_create (A)", dnnl_memory_create(&am, &p->a, e, (void *)A));
    DNNL_CHECK("memory_create (B)", dnnl_memory_create(&bm, &p->b, e, (void *)B));
    DNNL_CHECK("memory_create (C)", dnnl_memory_create(&cm, &p->c, e, C));
    DNNL_CHECK("memory_create (scratchpad)", dnnl_memory_create(&sm, &p->scratch, e, w->scratch));
    dnnl_exec_arg_t args[4] = {
        { DNNL_ARG_SRC, am }, { DNNL_ARG_WEIGHTS, bm }, { DNNL_ARG_DST, cm }, { DNNL_ARG_SCRATCHPAD, sm },
    };
    DNNL_CHECK("matmul execute", dnnl_primitive_execute(p->prim, w->stream, 4, args));
    DNNL_CHECK("stream_wait", dnnl_stream_wait(w->stream));
    dnnl_memory_destroy(am);
    dnnl_memory_destroy(bm);
    dnnl_memory_destroy(cm);
    dnnl_memory_destroy(sm);
}

const char *cpu_mm_impl(const cpu_mm_shape *s, char *buf, size_t len) {
    dnnl_status_t st;
    dnnl_primitive_desc_t pd = plan_pd(s, &st);
    if (!pd) snprintf(buf, len, "none (status %d)", (int)st);
    else {
        snprintf(buf, len, "%s", pd_impl(pd));
        dnnl_primitive_desc_destroy(pd);
    }
    return buf;
}
