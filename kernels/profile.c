/* profile.c - a profiling wrapper around any backend.
 *
 * nawal_ops_profiled(inner) returns a nawal_ops table whose every op calls
 * the inner backend's op between two sync()s and adds the wall time to a
 * per-op total. Synchronising around each op removes the overlap a GPU
 * stream would otherwise get, so the totals are a breakdown of where a
 * step's time goes, not a faster or slower step. nawal-bench train
 * --profile prints the table (nawal_ops_profile_print). */
#include "ops.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

enum {
    P_FILL, P_COPY, P_AXPY, P_SCALE, P_SUMSQ, P_MATMUL_FWD, P_MATMUL_BWD, P_LN_FWD, P_LN_BWD, P_ATT_FWD, P_ATT_BWD,
    P_GELU_FWD, P_GELU_BWD, P_RESIDUAL, P_EMB_FWD, P_EMB_BWD, P_XENT, P_ADAMW, P_SGD, P_UPLOAD, P_DOWNLOAD,
    P_PE_LINEAR, P_PE_BOUND, P_PE_BIAS, P_PE_LN, P_PE_ROWS, P_PE_TIED, P_PE_GRAD_LINEAR, P_PE_GRAD_LN, P_PE_SUM, P_SCALE_EX, P_NOISE, P_N
};
static const char *const names[P_N] = {
    "fill", "copy", "axpy", "scale", "sumsq", "matmul_fwd", "matmul_bwd", "layernorm_fwd", "layernorm_bwd",
    "attention_fwd", "attention_bwd", "gelu_fwd", "gelu_bwd", "residual_fwd", "embedding_fwd", "embedding_bwd",
    "softmax_xent", "adamw", "sgd", "upload", "download",
    "pe_norm_linear", "pe_bound_linear", "pe_norm_bias", "pe_norm_layernorm", "pe_norm_rows", "pe_norm_tied", "pe_grad_linear", "pe_grad_layernorm", "pe_sum",
    "scale_examples", "add_noise",
};

static const nawal_ops *inner;
static nawal_ops table;
static double total_s[P_N];
static long calls[P_N];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* T(op, index, call): time one inner call */
#define T(idx, call)                        \
    do {                                    \
        inner->sync(inner);                 \
        double t0_ = now_s();               \
        call;                               \
        inner->sync(inner);                 \
        double dt_ = now_s() - t0_;         \
        _Pragma("omp atomic")               \
        total_s[idx] += dt_;                \
        _Pragma("omp atomic")               \
        calls[idx]++;                       \
    } while (0)

static void *p_alloc(const nawal_ops *o, size_t b) { (void)o; return inner->alloc(inner, b); }
static void p_free(const nawal_ops *o, void *p) { (void)o; inner->free(inner, p); }
static void p_upload(const nawal_ops *o, void *d, const void *s, size_t b) { (void)o; T(P_UPLOAD, inner->upload(inner, d, s, b)); }
static void p_download(const nawal_ops *o, void *d, const void *s, size_t b) { (void)o; T(P_DOWNLOAD, inner->download(inner, d, s, b)); }
static void p_sync(const nawal_ops *o) { (void)o; inner->sync(inner); }
static void p_fill(const nawal_ops *o, float *x, float v, size_t n) { (void)o; T(P_FILL, inner->fill(inner, x, v, n)); }
static void p_copy(const nawal_ops *o, float *d, const float *s, size_t n) { (void)o; T(P_COPY, inner->copy(inner, d, s, n)); }
static void p_axpy(const nawal_ops *o, float *y, float a, const float *x, size_t n) { (void)o; T(P_AXPY, inner->axpy(inner, y, a, x, n)); }
static void p_scale(const nawal_ops *o, float *x, float a, size_t n) { (void)o; T(P_SCALE, inner->scale(inner, x, a, n)); }
static double p_sumsq(const nawal_ops *o, const float *x, size_t n) {
    (void)o;
    double r = 0.0;
    T(P_SUMSQ, r = inner->sumsq(inner, x, n));
    return r;
}
static void p_matmul_fwd(const nawal_ops *o, float *out, const float *inp, const float *w, const float *bias, int N, int C,
                         int OC, nawal_wlayout l) {
    (void)o;
    T(P_MATMUL_FWD, inner->matmul_fwd(inner, out, inp, w, bias, N, C, OC, l));
}
static void p_matmul_bwd(const nawal_ops *o, float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC, nawal_wlayout l) {
    (void)o;
    T(P_MATMUL_BWD, inner->matmul_bwd(inner, dinp, dw, dbias, dout, inp, w, N, C, OC, l));
}
static void p_ln_fwd(const nawal_ops *o, float *out, float *mean, float *rstd, const float *inp, const float *w,
                     const float *b, int N, int C) {
    (void)o;
    T(P_LN_FWD, inner->layernorm_fwd(inner, out, mean, rstd, inp, w, b, N, C));
}
static void p_ln_bwd(const nawal_ops *o, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, const float *mean, const float *rstd, int N, int C) {
    (void)o;
    T(P_LN_BWD, inner->layernorm_bwd(inner, dinp, dw, db, dout, inp, w, mean, rstd, N, C));
}
static void p_att_fwd(const nawal_ops *o, float *out, float *att, const float *qkv, int B, int Tn, int C, int NH) {
    (void)o;
    T(P_ATT_FWD, inner->attention_fwd(inner, out, att, qkv, B, Tn, C, NH));
}
static void p_att_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                      int B, int Tn, int C, int NH) {
    (void)o;
    T(P_ATT_BWD, inner->attention_bwd(inner, dqkv, datt, dout, qkv, att, B, Tn, C, NH));
}
static void p_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n) { (void)o; T(P_GELU_FWD, inner->gelu_fwd(inner, out, inp, n)); }
static void p_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n) {
    (void)o;
    T(P_GELU_BWD, inner->gelu_bwd(inner, dinp, inp, dout, n));
}
static void p_residual(const nawal_ops *o, float *out, const float *a, const float *b, size_t n) {
    (void)o;
    T(P_RESIDUAL, inner->residual_fwd(inner, out, a, b, n));
}
static void p_emb_fwd(const nawal_ops *o, float *out, const int32_t *tok, const float *wte, const float *wpe, int B, int Tn,
                      int C) {
    (void)o;
    T(P_EMB_FWD, inner->embedding_fwd(inner, out, tok, wte, wpe, B, Tn, C));
}
static void p_emb_bwd(const nawal_ops *o, float *dwte, float *dwpe, const float *dout, const int32_t *tok, int B, int Tn,
                      int C) {
    (void)o;
    T(P_EMB_BWD, inner->embedding_bwd(inner, dwte, dwpe, dout, tok, B, Tn, C));
}
static void p_xent(const nawal_ops *o, float *logits, float *losses, const int32_t *tg, int N, int V, float gs) {
    (void)o;
    T(P_XENT, inner->softmax_xent(inner, logits, losses, tg, N, V, gs));
}
static void p_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                    float b2, float eps, float wd, int t) {
    (void)o;
    T(P_ADAMW, inner->adamw(inner, p, g, m, v, n, lr, b1, b2, eps, wd, t));
}
static void p_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n, float lr, float mu, float wd) {
    (void)o;
    T(P_SGD, inner->sgd(inner, p, g, buf, n, lr, mu, wd));
}
static void p_pe_linear(const nawal_ops *o, float *nr, const float *A, const float *D, int B, int Tn, int d, int p) {
    (void)o;
    T(P_PE_LINEAR, inner->pe_norm_linear(inner, nr, A, D, B, Tn, d, p));
}
static void p_pe_bound(const nawal_ops *o, float *bd, const float *A, const float *D, int B, int Tn, int d, int p) {
    (void)o;
    T(P_PE_BOUND, inner->pe_bound_linear(inner, bd, A, D, B, Tn, d, p));
}
static void p_pe_bias(const nawal_ops *o, float *nr, const float *D, int B, int Tn, int p) {
    (void)o;
    T(P_PE_BIAS, inner->pe_norm_bias(inner, nr, D, B, Tn, p));
}
static void p_pe_ln(const nawal_ops *o, float *nr, const float *D, const float *inp, const float *mean, const float *rstd,
                    int B, int Tn, int C) {
    (void)o;
    T(P_PE_LN, inner->pe_norm_layernorm(inner, nr, D, inp, mean, rstd, B, Tn, C));
}
static void p_pe_rows(const nawal_ops *o, float *nr, const float *D, int B, int Tn, int C) {
    (void)o;
    T(P_PE_ROWS, inner->pe_norm_rows(inner, nr, D, B, Tn, C));
}
static void p_pe_tied(const nawal_ops *o, float *nr, const float *dres, const int32_t *tok, const float *lnf_,
                      const float *dlogits, int B, int Tn, int C, int V) {
    (void)o;
    T(P_PE_TIED, inner->pe_norm_tied(inner, nr, dres, tok, lnf_, dlogits, B, Tn, C, V));
}
static void p_pe_grad_linear(const nawal_ops *o, float *dw, float *db, size_t st, const float *dout, const float *inp,
                             int B, int Tn, int C, int OC, nawal_wlayout l) {
    (void)o;
    T(P_PE_GRAD_LINEAR, inner->pe_grad_linear(inner, dw, db, st, dout, inp, B, Tn, C, OC, l));
}
static void p_pe_grad_ln(const nawal_ops *o, float *dw, float *db, size_t st, const float *dout, const float *inp,
                         const float *mean, const float *rstd, int B, int Tn, int C) {
    (void)o;
    T(P_PE_GRAD_LN, inner->pe_grad_layernorm(inner, dw, db, st, dout, inp, mean, rstd, B, Tn, C));
}
static void p_pe_sum(const nawal_ops *o, float *y, const float *X, size_t st, const float *sc, int B, size_t n) {
    (void)o;
    T(P_PE_SUM, inner->pe_sum(inner, y, X, st, sc, B, n));
}
static void p_scale_ex(const nawal_ops *o, float *x, const float *sc, int B, size_t n) {
    (void)o;
    T(P_SCALE_EX, inner->scale_examples(inner, x, sc, B, n));
}
static void p_noise(const nawal_ops *o, float *x, size_t n, float std, uint64_t key, uint64_t stream) {
    (void)o;
    T(P_NOISE, inner->add_noise(inner, x, n, std, key, stream));
}
static int p_set_precision(const nawal_ops *o, nawal_precision p, char *err, size_t errlen) {
    (void)o;
    return inner->set_precision(inner, p, err, errlen);
}
static nawal_precision p_get_precision(const nawal_ops *o) { (void)o; return inner->get_precision(inner); }
static int p_parallel_width(const nawal_ops *o) { (void)o; return inner->parallel_width(inner); }
static size_t p_topk(const nawal_ops *o, uint32_t *idx, const float *x, size_t n, size_t k) { /* not a step op: untimed */
    (void)o;
    return inner->topk_select(inner, idx, x, n, k);
}
static void p_run_parallel(const nawal_ops *o, int n, void (*fn)(void *, int), void *ctx) {
    (void)o;
    inner->run_parallel(inner, n, fn, ctx);
}

const nawal_ops *nawal_ops_profiled(const nawal_ops *in) {
    inner = in;
    memset(total_s, 0, sizeof total_s);
    memset(calls, 0, sizeof calls);
    table = (nawal_ops){
        .alloc = p_alloc, .free = p_free, .upload = p_upload, .download = p_download, .sync = p_sync,
        .fill = p_fill, .copy = p_copy, .axpy = p_axpy, .scale = p_scale, .sumsq = p_sumsq,
        .matmul_fwd = p_matmul_fwd, .matmul_bwd = p_matmul_bwd, .layernorm_fwd = p_ln_fwd, .layernorm_bwd = p_ln_bwd,
        .attention_fwd = p_att_fwd, .attention_bwd = p_att_bwd, .gelu_fwd = p_gelu_fwd, .gelu_bwd = p_gelu_bwd,
        .residual_fwd = p_residual, .embedding_fwd = p_emb_fwd, .embedding_bwd = p_emb_bwd, .softmax_xent = p_xent,
        .adamw = p_adamw, .sgd = p_sgd, .set_precision = p_set_precision, .get_precision = p_get_precision,
        .pe_norm_linear = p_pe_linear, .pe_bound_linear = p_pe_bound, .pe_norm_bias = p_pe_bias, .pe_norm_layernorm = p_pe_ln, .pe_norm_rows = p_pe_rows,
        .pe_norm_tied = p_pe_tied, .pe_grad_linear = p_pe_grad_linear, .pe_grad_layernorm = p_pe_grad_ln,
        .pe_sum = p_pe_sum, .scale_examples = p_scale_ex, .add_noise = p_noise, .parallel_width = p_parallel_width,
        .run_parallel = p_run_parallel, .topk_select = p_topk,
    };
    table.name = in->name;
    memcpy(table.device_desc, in->device_desc, sizeof table.device_desc);
    return &table;
}

void nawal_ops_profile_print(FILE *f, int steps) {
    double all = 0.0;
    for (int i = 0; i < P_N; i++) all += total_s[i];
    if (steps < 1) steps = 1;
    fprintf(f, "profile (ops timed between syncs, per step):\n");
    for (int i = 0; i < P_N; i++) {
        if (!calls[i]) continue;
        fprintf(f, "  %-14s %9.3f ms  %5.1f%%  %6.1f calls\n", names[i], 1e3 * total_s[i] / steps,
                100.0 * total_s[i] / all, (double)calls[i] / steps);
    }
    fprintf(f, "  %-14s %9.3f ms\n", "total", 1e3 * all / steps);
}
