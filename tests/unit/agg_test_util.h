/* agg_test_util.h - helpers for the aggregation and round machine tests
 * (test_coord_aggregate.c, test_coord_rounds.c): a small model layout with
 * awkward shapes (a scalar, a tensor spanning several work chunks), random
 * models and deltas written as safetensors files (optionally malformed:
 * a tensor missing, an extra one, a transposed shape, an I32 tensor), a
 * brute-force FedAvg in double, and FedAvg's documented error bound. */
#ifndef NAWAL_AGG_TEST_UTIL_H
#define NAWAL_AGG_TEST_UTIL_H

#include "aggregate.h"
#include "coord_test_util.h"
#include "delta_codec.h"
#include "ops.h"
#include "safetensors.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[2];
} agg_tensor_def;

/* HF-like names; "big" spans three default chunks, "scalar" has rank 0 */
static const agg_tensor_def AGG_LAYOUT[] = {
    {"transformer.wte.weight", 2, {50, 16}}, {"transformer.h.0.attn.c_attn.weight", 2, {16, 48}},
    {"transformer.h.0.attn.c_attn.bias", 1, {48}}, {"transformer.ln_f.weight", 1, {16}},
    {"big", 1, {70001}}, {"scalar", 0, {0}},
};
#define AGG_NT (sizeof AGG_LAYOUT / sizeof *AGG_LAYOUT)

static inline size_t agg_numel(size_t t) {
    size_t n = 1;
    for (int d = 0; d < AGG_LAYOUT[t].ndim; d++) n *= (size_t)AGG_LAYOUT[t].shape[d];
    return n;
}

static inline size_t agg_total(void) {
    size_t n = 0;
    for (size_t t = 0; t < AGG_NT; t++) n += agg_numel(t);
    return n;
}

typedef enum { AGG_OK, AGG_MISSING, AGG_EXTRA, AGG_TRANSPOSED, AGG_I32, AGG_REORDERED } agg_mutation;

/* Writes values (agg_total() floats, tensors in AGG_LAYOUT order) as a
 * safetensors file, mutated as asked (on tensor 1 where it applies). */
static inline void agg_write(const char *path, const float *values, agg_mutation mut) {
    nawal_st_tensor ts[AGG_NT + 1];
    size_t n = 0, off = 0;
    static const int32_t ints[16 * 48];
    for (size_t t = 0; t < AGG_NT; t++) {
        size_t numel = agg_numel(t);
        nawal_st_tensor x = {.name = AGG_LAYOUT[t].name, .dtype = NAWAL_ST_F32, .ndim = AGG_LAYOUT[t].ndim,
                             .nbytes = numel * 4, .data = values + off};
        x.shape[0] = AGG_LAYOUT[t].shape[0];
        x.shape[1] = AGG_LAYOUT[t].shape[1];
        off += numel;
        if (t == 1 && mut == AGG_MISSING) continue;
        if (t == 1 && mut == AGG_TRANSPOSED) { x.shape[0] = AGG_LAYOUT[t].shape[1]; x.shape[1] = AGG_LAYOUT[t].shape[0]; }
        if (t == 1 && mut == AGG_I32) { x.dtype = NAWAL_ST_I32; x.data = ints; }
        ts[n++] = x;
    }
    if (mut == AGG_EXTRA) ts[n++] = (nawal_st_tensor){.name = "extra.bias", .dtype = NAWAL_ST_F32, .ndim = 1,
                                                      .shape = {4}, .nbytes = 16, .data = values};
    if (mut == AGG_REORDERED) /* same tensors, another file order */
        for (size_t i = 0; i < n / 2; i++) { nawal_st_tensor tmp = ts[i]; ts[i] = ts[n - 1 - i]; ts[n - 1 - i] = tmp; }
    static const char *const meta[] = {"format", "pt", "note", "agg test", NULL};
    char err[512] = "";
    cr_assert_eq(nawal_st_write(path, ts, n, meta, err, sizeof err), 0, "write %s: %s", path, err);
}

/* Random values of scale sc; a few exact zeros and large values too. */
static inline void agg_random(uint64_t *seed, float *v, size_t n, float sc) {
    for (size_t i = 0; i < n; i++) {
        uint64_t k = test_rand_u64(seed) % 1000;
        v[i] = k == 0 ? 0.0f : k == 1 ? sc * 1e3f : sc * test_rand_normal(seed);
    }
}

static inline void agg_write_bytes(const char *path, const uint8_t *p, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "%s", path);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* Encodes d (agg_total() floats) as a codec frame (ratio, values; int8
 * blocks of 100) into path, with error feedback from an earlier round (a
 * residual left by encoding another delta), and replaces d with what a
 * decoder gets (nawal_delta_decode of the file). */
static inline void agg_write_frame(const char *path, float *d, float ratio, nawal_delta_values values, uint64_t *seed) {
    size_t n = agg_total();
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    p.ratio = ratio;
    p.values = values;
    p.block = 100;
    float *res = calloc(n, 4), *prev = malloc(n * 4);
    agg_random(seed, prev, n, 0.01f);
    uint8_t *fr;
    size_t len;
    char err[512] = "";
    const nawal_ops *o = nawal_ops_cpu(1);
    cr_assert_eq(nawal_delta_encode(o, &p, prev, res, n, &fr, &len, err, sizeof err), 0, "%s", err);
    free(fr);
    cr_assert_eq(nawal_delta_encode(o, &p, d, res, n, &fr, &len, err, sizeof err), 0, "%s", err);
    agg_write_bytes(path, fr, len);
    cr_assert_eq(nawal_delta_decode(d, n, fr, len, err, sizeof err), 0, "%s", err);
    free(fr);
    free(res);
    free(prev);
}

/* A base model and k random deltas (AGG_LAYOUT's floats each, of scales
 * 2^-6 .. 2^1) with example counts from 1 to ~10^12, the base written to
 * root/base.safetensors; the caller writes the updates (paths[i] is theirs
 * to fill) in whatever form its test wants. kinds[i] (0s) is the caller's
 * too. */
typedef struct {
    size_t k;
    float *base;
    float **d; /* what the aggregator should see (a frame's decoded values) */
    uint64_t *w;
    int *kinds;
    char (*paths)[256];
    char base_path[256];
} agg_fixture;

static inline void agg_fixture_make(agg_fixture *f, uint64_t *seed, size_t k, const char *root) {
    size_t n = agg_total();
    f->k = k;
    f->base = malloc(n * 4);
    f->d = calloc(k, sizeof *f->d);
    f->w = calloc(k, sizeof *f->w);
    f->kinds = calloc(k ? k : 1, sizeof *f->kinds);
    f->paths = calloc(k ? k : 1, sizeof *f->paths);
    cr_assert(f->base && f->d && f->w && f->kinds && f->paths);
    agg_random(seed, f->base, n, 1.0f);
    snprintf(f->base_path, sizeof f->base_path, "%s/base.safetensors", root);
    agg_write(f->base_path, f->base, AGG_OK);
    for (size_t i = 0; i < k; i++) {
        f->d[i] = malloc(n * 4);
        agg_random(seed, f->d[i], n, (float)ldexp(1.0, (int)(test_rand_u64(seed) % 8) - 6));
        uint64_t r = test_rand_u64(seed) % 4; /* normalisation in double must cope with any mix */
        f->w[i] = 1 + test_rand_u64(seed) % (r == 0 ? 10 : r == 1 ? 100000 : r == 2 ? 1000000000000ull : 3);
    }
}

static inline void agg_fixture_free(agg_fixture *f) {
    for (size_t i = 0; i < f->k; i++) free(f->d[i]);
    free(f->d);
    free(f->w);
    free(f->kinds);
    free(f->paths);
    free(f->base);
}

/* Cuts the last n bytes off the file at path. */
static inline void agg_truncate(const char *path, long n) {
    FILE *g = fopen(path, "rb+");
    cr_assert(g, "%s", path);
    cr_assert_eq(fseek(g, 0, SEEK_END), 0);
    long len = ftell(g);
    fclose(g);
    cr_assert_eq(truncate(path, len - n), 0);
}

/* A coordinator directory root/coord whose round *id (target f->k, minimum
 * 1) is on f's base, with update i from validator key {i + 1, 0, ...} (key
 * order = index order): f's paths[i] as its delta blob, w[i] examples. */
static inline nawal_store *agg_store_round(const char *root, const agg_fixture *f, int64_t *id) {
    char dir[300], err[512] = "";
    snprintf(dir, sizeof dir, "%s/coord", root);
    nawal_store *s = coord_init_open(dir);
    nawal_round r = {0};
    cr_assert_eq(nawal_blobstore_put_file(s, f->base_path, r.base_cid, NULL, err, sizeof err), 0, "%s", err);
    r.started_ms = 1700000000000ll;
    r.deadline_ms = r.started_ms + 3600000;
    r.pool_planck = 1000;
    r.target = (uint32_t)f->k;
    r.min = 1;
    cr_assert_eq(nawal_store_round_create(s, &r, NULL, id, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < f->k; i++) {
        uint8_t pk[32] = {(uint8_t)(i + 1)};
        coord_add_validator(s, pk, 1000);
        nawal_submission sub = {.round_id = *id, .num_examples = f->w[i], .received_ms = r.started_ms + 1000,
                                .quality_ppm = 900000};
        memcpy(sub.validator, pk, 32);
        cr_assert_eq(nawal_blobstore_put_file(s, f->paths[i], sub.delta_cid, NULL, err, sizeof err), 0, "%s", err);
        cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), 0, "%s", err);
    }
    return s;
}

/* A growing memory buffer as a nawal_byte_sink. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} agg_membuf;

static inline int agg_mem_sink(void *ctx, const void *buf, size_t len, char *err, size_t errlen) {
    (void)err; (void)errlen;
    agg_membuf *m = ctx;
    if (m->len + len > m->cap) {
        size_t nc = (m->cap ? m->cap * 2 : 1 << 16);
        while (nc < m->len + len) nc *= 2;
        m->p = realloc(m->p, nc);
        cr_assert(m->p);
        m->cap = nc;
    }
    memcpy(m->p + m->len, buf, len);
    m->len += len;
    return 0;
}

/* The floats of a serialized model (AGG_LAYOUT order) out of a safetensors buffer. */
static inline float *agg_parse(const agg_membuf *m) {
    nawal_st_file *f;
    char err[512] = "";
    cr_assert_eq(nawal_st_parse(&f, m->p, m->len, "aggregate", err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_st_count(f), AGG_NT);
    float *v = malloc(agg_total() * 4);
    size_t off = 0;
    for (size_t t = 0; t < AGG_NT; t++) {
        const nawal_st_tensor *x = nawal_st_at(f, t);
        cr_assert_str_eq(x->name, AGG_LAYOUT[t].name, "output keeps the base's tensor order");
        cr_assert_eq(x->dtype, NAWAL_ST_F32);
        cr_assert_eq(x->ndim, AGG_LAYOUT[t].ndim);
        cr_assert_eq(x->nbytes, agg_numel(t) * 4);
        memcpy(v + off, x->data, x->nbytes);
        off += agg_numel(t);
    }
    cr_assert_str_eq(nawal_st_metadata(f, "note"), "agg test", "output keeps the base's metadata");
    nawal_st_free(f);
    return v;
}

/* base + sum w_i d_i / sum w_i in double, for the deltas with use[i]. */
static inline double *agg_reference(const float *base, float *const *deltas, const uint64_t *w, const int *use, size_t k) {
    size_t n = agg_total();
    double *r = calloc(n, sizeof *r), W = 0;
    cr_assert(r);
    for (size_t i = 0; i < k; i++) if (!use || use[i]) W += (double)w[i];
    for (size_t i = 0; i < k; i++) {
        if (use && !use[i]) continue;
        double c = (double)w[i] / W;
        for (size_t e = 0; e < n; e++) r[e] += c * deltas[i][e];
    }
    for (size_t e = 0; e < n; e++) r[e] += base[e];
    return r;
}

/* aggregate.h's bound: (K + 3) u (max|delta| + |base|), K updates used */
static inline void agg_check_close(const float *got, const double *want, const float *base, float *const *deltas,
                                   const int *use, size_t k, uint64_t seed) {
    size_t n = agg_total(), K = 0;
    double M = 0;
    for (size_t i = 0; i < k; i++) {
        if (use && !use[i]) continue;
        K++;
        for (size_t e = 0; e < n; e++) M = fmax(M, fabs(deltas[i][e]));
    }
    double u = ldexp(1.0, -24);
    for (size_t e = 0; e < n; e++) {
        double bound = (K + 3.0) * u * (M + fabs(base[e]));
        cr_assert(fabs(got[e] - want[e]) <= bound, "element %zu: got %.9g want %.9g (bound %.3g, K=%zu, seed %llu)",
                  e, got[e], want[e], bound, K, (unsigned long long)seed);
    }
}

/* the model blob `cid` of store s read whole into a new flat array (tensors
 * in AGG_LAYOUT's order, names checked) */
static inline float *agg_read_blob(nawal_store *s, const uint8_t *cid) {
    char err[256];
    nawal_tensor_source *m;
    cr_assert_eq(nawal_tensor_source_open_blob(&m, s, cid, err, sizeof err), 0, "%s", err);
    size_t off = 0;
    float *got = malloc(agg_total() * 4);
    cr_assert(got);
    for (size_t t = 0; t < AGG_NT; t++) {
        cr_assert_str_eq(m->tensors[t].name, AGG_LAYOUT[t].name);
        cr_assert_eq(m->read(m, t, 0, agg_numel(t), got + off, err, sizeof err), 0, "%s", err);
        off += agg_numel(t);
    }
    nawal_tensor_source_close(m);
    return got;
}

/* Runs aggregator a (destroyed after) over a base file and update files of
 * either kind (safetensors deltas or codec frames, opened with
 * nawal_update_open_file): finish, then write into out; returns the first
 * status that is not 0 (finish's or write's). reasons[i] (may be NULL) gets
 * "" when update i was used, else why not. */
static inline int agg_run(nawal_aggregator *a, const char *base_path, char paths[][256], const uint64_t *w, size_t k,
                          agg_membuf *out, char reasons[][NAWAL_AGG_REASON_BYTES]) {
    char err[512] = "", scratch[NAWAL_AGG_REASON_BYTES];
    nawal_tensor_source *base;
    cr_assert_eq(nawal_tensor_source_open_file(&base, base_path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a->begin(a, base, err, sizeof err), 0, "%s", err);
    size_t *idx = calloc(k ? k : 1, sizeof *idx), offered = 0;
    for (size_t i = 0; i < k; i++) {
        nawal_tensor_source *d;
        nawal_delta_frame *fr;
        char *why = reasons ? reasons[i] : scratch;
        why[0] = 0;
        idx[i] = SIZE_MAX;
        int rc = nawal_update_open_file(&d, &fr, paths[i], why, NAWAL_AGG_REASON_BYTES);
        cr_assert(rc >= 0, "open %s: %s", paths[i], why);
        if (rc == NAWAL_AGG_REJECTED) continue;
        cr_assert((d != NULL) != (fr != NULL));
        rc = fr ? a->add_frame(a, fr, w[i], why, NAWAL_AGG_REASON_BYTES) : a->add(a, d, w[i], why, NAWAL_AGG_REASON_BYTES);
        cr_assert(rc >= 0, "add %zu: %s", i, why);
        cr_assert(rc == 0 || why[0], "a rejection has a reason");
        idx[i] = offered++;
    }
    memset(out, 0, sizeof *out);
    int rc = a->finish(a, err, sizeof err);
    cr_assert(rc >= 0, "finish: %s", err);
    for (size_t i = 0; i < k; i++) {
        if (idx[i] == SIZE_MAX) continue;
        char *why = reasons ? reasons[i] : scratch;
        int v = a->verdict(a, idx[i], why, NAWAL_AGG_REASON_BYTES);
        cr_assert(v >= 0);
        if (v == 0) why[0] = 0;
        else cr_assert(why[0], "a rejection has a reason");
    }
    if (rc == 0) {
        rc = a->write(a, agg_mem_sink, out, err, sizeof err);
        cr_assert(rc >= 0, "write: %s", err);
    }
    free(idx);
    nawal_aggregator_destroy(a);
    nawal_tensor_source_close(base);
    return rc;
}

/* agg_run with FedAvg (options o, NULL for the defaults) */
static inline int agg_run_fedavg(const nawal_fedavg_options *o, const char *base_path, char paths[][256],
                                 const uint64_t *w, size_t k, agg_membuf *out, char reasons[][NAWAL_AGG_REASON_BYTES]) {
    char err[512] = "";
    nawal_aggregator *a;
    cr_assert_eq(nawal_fedavg_create(&a, o, err, sizeof err), 0, "%s", err);
    return agg_run(a, base_path, paths, w, k, out, reasons);
}

#endif
