/* test_coord_robust.c - the Byzantine-robust aggregation rules (robust.c):
 * coordinate-wise median and trimmed mean against a brute-force version
 * (every element's values sorted in double) on random deltas with ties,
 * bit-identical across thread counts; (multi-)Krum's choice and result
 * against brute-force scores, also on a model of so many tensors that its
 * pair distances are summed in several batches of windows; the robustness property itself (Byzantine
 * updates of any size leave the median and trimmed mean inside the range
 * of the honest values and are never chosen by Krum, while FedAvg is
 * dragged away by the same updates); codec frames decoded (unsent entries
 * count as 0); a NaN update dropped with the result exactly that of the
 * others; strategy names and parameters parsed or refused; and the round
 * driver with a robust rule over a store holding both kinds of update. */
#include "agg_test_util.h"
#include "coord_test_util.h"
#include "aggregate_internal.h"

#include <dirent.h>

static char g_root[128];

static void setup(void) { coord_make_root(g_root, sizeof g_root, "robust"); }
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_robust, .init = setup, .fini = teardown, .timeout = 120);

typedef agg_fixture fixture;

/* agg_fixture's deltas, written as safetensors (a quarter in another file
 * order), after about one element in 8 copies update 0's value into a few
 * others (ties) and one element in 64 gets the same value in all */
static void fixture_make(fixture *f, uint64_t *seed, size_t k) {
    agg_fixture_make(f, seed, k, g_root);
    size_t n = agg_total();
    for (size_t e = 0; e < n; e++) {
        uint64_t r = test_rand_u64(seed) % 64;
        for (size_t i = 1; i < k; i++)
            if (r == 0 || (r < 8 && test_rand_u64(seed) % 2)) f->d[i][e] = f->d[0][e];
    }
    for (size_t i = 0; i < k; i++) {
        snprintf(f->paths[i], sizeof f->paths[i], "%s/delta%zu.safetensors", g_root, i);
        agg_write(f->paths[i], f->d[i], test_rand_u64(seed) % 4 == 0 ? AGG_REORDERED : AGG_OK);
    }
}

static void fixture_free(fixture *f) { agg_fixture_free(f); }

static int run_named(const char *strategy, int threads, fixture *f, agg_membuf *out,
                     char reasons[][NAWAL_AGG_REASON_BYTES]) {
    char err[512] = "";
    nawal_aggregator *a;
    cr_assert_eq(nawal_aggregator_create(&a, strategy, threads, g_root, err, sizeof err), 0, "%s: %s", strategy, err);
    return agg_run(a, f->base_path, f->paths, f->w, f->k, out, reasons);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The rule's delta at element e over the updates with use[i], by sorting:
 * median (trim < 0) or trimmed mean (b = ceil(trim x n), capped). */
static double brute_stat(float *const *d, const int *use, size_t k, size_t e, double trim) {
    double v[64];
    size_t n = 0;
    for (size_t i = 0; i < k; i++)
        if (!use || use[i]) v[n++] = d[i][e];
    qsort(v, n, sizeof *v, cmp_d);
    if (trim < 0) return n % 2 ? v[n / 2] : (double)(float)((v[n / 2 - 1] + v[n / 2]) / 2.0);
    size_t b = (size_t)ceil(trim * (double)n - 1e-9);
    if (2 * b >= n) b = (n - 1) / 2;
    double s = 0;
    for (size_t q = b; q < n - b; q++) s += v[q];
    return s / (double)(n - 2 * b);
}

/* got == base + (float)stat, exactly for the median, within the roundings
 * of a double sum and two float roundings for the trimmed mean */
static void check_stat(const float *got, const fixture *f, const int *use, double trim, const char *what,
                       uint64_t seed) {
    for (size_t e = 0; e < agg_total(); e++) {
        double st = brute_stat(f->d, use, f->k, e, trim);
        float want = f->base[e] + (float)st;
        if (trim < 0)
            cr_assert(got[e] == want, "%s element %zu: got %.9g want %.9g (seed %llu)", what, e, got[e], want,
                      (unsigned long long)seed);
        else {
            double vmax = 0; /* a double sum of n values in another order differs by ~n u_d max|v| */
            for (size_t i = 0; i < f->k; i++) vmax = fmax(vmax, fabs(f->d[i][e]));
            double tol = ldexp(1.0, -23) * (fabs(f->base[e]) + 2 * fabs(st)) + ldexp((double)f->k * vmax, -50);
            cr_assert(fabs(got[e] - want) <= tol, "%s element %zu: got %.9g want %.9g (seed %llu)", what, e, got[e],
                      want, (unsigned long long)seed);
        }
    }
}

Test(coord_robust, median_and_trimmed_mean_match_brute_force) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    for (int trial = 0; trial < 8; trial++) {
        /* up to 32 updates go through the sorting network, more through quickselect */
        size_t k = trial == 5 ? 32 : trial == 6 ? 33 : trial == 7 ? 34 + test_rand_u64(&seed) % 12
                                                                   : 1 + test_rand_u64(&seed) % 9;
        fixture f;
        fixture_make(&f, &seed, k);
        static const char *const rules[] = {"median", "trimmed-mean", "trimmed-mean:0.34", "trimmed-mean:0"};
        static const double trims[] = {-1, 0.2, 0.34, 0};
        for (int r = 0; r < 4; r++) {
            agg_membuf out, out2;
            cr_assert_eq(run_named(rules[r], 1, &f, &out, NULL), 0);
            float *got = agg_parse(&out);
            check_stat(got, &f, NULL, trims[r], rules[r], seed0);
            cr_assert_eq(run_named(rules[r], 2, &f, &out2, NULL), 0);
            cr_assert(out.len == out2.len && memcmp(out.p, out2.p, out.len) == 0,
                      "%s: the result depends on the thread count (seed %llu)", rules[r], (unsigned long long)seed0);
            free(got);
            free(out.p);
            free(out2.p);
        }
        fixture_free(&f);
    }
}

/* Krum by brute force over k updates d[i] of n values: scores in double,
 * the m lowest chosen (ties: earlier). */
static void brute_krum(float *const *d, size_t k, size_t n, long fopt, long mopt, int *chosen, double *score_out) {
    double *D = calloc(k * k, sizeof *D), *row = malloc(k * sizeof *row), *score = malloc(k * sizeof *score);
    cr_assert(D && row && score);
    for (size_t i = 0; i < k; i++)
        for (size_t j = 0; j < k; j++)
            for (size_t e = 0; e < n; e++) {
                double x = (double)d[i][e] - (double)d[j][e];
                D[i * k + j] += x * x;
            }
    long fv = fopt < 0 ? (k >= 3 ? ((long)k - 3) / 2 : 0) : fopt;
    long fe = (long)k - fv - 2 < 1 ? (k >= 3 ? (long)k - 3 : 0) : fv;
    size_t neigh = k >= 3 ? k - (size_t)fe - 2 : 0;
    size_t m = mopt > 0 ? (size_t)mopt : (fv < (long)k ? k - (size_t)fv : 1);
    if (m > k) m = k;
    for (size_t i = 0; i < k; i++) {
        size_t r = 0;
        for (size_t j = 0; j < k; j++)
            if (j != i) row[r++] = D[i * k + j];
        qsort(row, r, sizeof *row, cmp_d);
        score[i] = 0;
        for (size_t j = 0; j < neigh; j++) score[i] += row[j];
        chosen[i] = 0;
    }
    memcpy(score_out, score, k * sizeof *score);
    for (size_t c = 0; c < m; c++) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < k; i++)
            if (!chosen[i] && (best == SIZE_MAX || score[i] < score[best])) best = i;
        chosen[best] = 1;
    }
    free(D);
    free(row);
    free(score);
}

/* "krum", "krum:F" or "krum:F:M" (fo < 0: F defaulted; mo == 0: M defaulted) */
static void krum_name(char *name, size_t len, long fo, long mo) {
    if (fo < 0) snprintf(name, len, "krum");
    else if (mo == 0) snprintf(name, len, "krum:%ld", fo);
    else snprintf(name, len, "krum:%ld:%ld", fo, mo);
}

/* Krum's verdicts why[0..k) ("" for a chosen update, else a reason giving
 * its score to 6 digits) and its result got (base + the mean of the chosen
 * deltas, n values each) against brute_krum's. */
static void check_krum(const char *name, long fo, long mo, const float *base, float *const *d, size_t k, size_t n,
                       char (*why)[NAWAL_AGG_REASON_BYTES], const float *got, uint64_t seed) {
    int *chosen = malloc(k * sizeof *chosen);
    double *score = malloc(k * sizeof *score);
    cr_assert(chosen && score);
    brute_krum(d, k, n, fo, mo, chosen, score);
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        cr_assert_eq(why[i][0] == 0, chosen[i], "%s: update %zu %s by Krum, brute force says %s (seed %llu): %s",
                     name, i, why[i][0] ? "dropped" : "chosen", chosen[i] ? "chosen" : "dropped",
                     (unsigned long long)seed, why[i]);
        m += (size_t)chosen[i];
        if (chosen[i]) continue;
        const char *sp = strstr(why[i], "score ");
        cr_assert(strstr(why[i], "krum: not among") && sp, "%s", why[i]);
        double got_score = strtod(sp + 6, NULL);
        cr_assert(fabs(got_score - score[i]) <= 1e-5 * score[i],
                  "%s: update %zu scores %.9g, brute force %.9g (seed %llu)", name, i, got_score, score[i],
                  (unsigned long long)seed);
    }
    for (size_t e = 0; e < n; e++) {
        double s = 0;
        for (size_t i = 0; i < k; i++)
            if (chosen[i]) s += d[i][e];
        float want = base[e] + (float)(s / (double)m);
        double tol = ldexp(1.0, -23) * (fabs(base[e]) + 2 * fabs(s / (double)m)) + 1e-300;
        cr_assert(fabs(got[e] - want) <= tol, "%s element %zu: got %.9g want %.9g (seed %llu)", name, e, got[e],
                  want, (unsigned long long)seed);
    }
    free(chosen);
    free(score);
}

/* Two runs' outputs and verdicts identical (the scores to the digits printed). */
static void check_same_run(const char *name, const agg_membuf *a, const agg_membuf *b,
                           char (*why)[NAWAL_AGG_REASON_BYTES], char (*why2)[NAWAL_AGG_REASON_BYTES], size_t k) {
    cr_assert(a->len == b->len && memcmp(a->p, b->p, a->len) == 0, "%s depends on the thread count", name);
    for (size_t i = 0; i < k; i++)
        cr_assert_str_eq(why[i], why2[i], "%s: update %zu's verdict depends on the thread count", name, i);
}

Test(coord_robust, krum_matches_brute_force) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    for (int trial = 0; trial < 8; trial++) {
        size_t k = 1 + test_rand_u64(&seed) % 9;
        fixture f;
        fixture_make(&f, &seed, k);
        long fo = trial % 3 == 0 ? -1 : (long)(test_rand_u64(&seed) % 4);
        long mo = trial % 2 || fo < 0 ? 0 : 1 + (long)(test_rand_u64(&seed) % k);
        char name[64];
        krum_name(name, sizeof name, fo, mo);
        char (*why)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why);
        char (*why2)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why2);
        agg_membuf out, out2;
        cr_assert_eq(run_named(name, 1 + trial % 2, &f, &out, why), 0);
        float *got = agg_parse(&out);
        check_krum(name, fo, mo, f.base, f.d, k, agg_total(), why, got, seed0);
        cr_assert_eq(run_named(name, 3 - (1 + trial % 2), &f, &out2, why2), 0);
        check_same_run(name, &out, &out2, why, why2, k);
        free(why2);
        free(got);
        free(out.p);
        free(out2.p);
        free(why);
        fixture_free(&f);
    }
}

/* ---- Krum over many windows ------------------------------------------------
 * krum_distances holds the pair distances of at most NAWAL_KRUM_BATCH (256)
 * windows at once and goes through the model batch after batch. Every
 * tensor is at least one window (and one of at most 1024 values exactly
 * one), so a model of more than 512 small tensors takes three batches or
 * more (the last one partial) with small updates. */
#define MANY_BATCH NAWAL_KRUM_BATCH
#define MANY_MIN_TENSORS (2 * MANY_BATCH + 1)

typedef struct {
    size_t nt, n;       /* tensors, floats in all */
    size_t *numel;
    char (*names)[16];
} many_layout;

/* nt in [MANY_MIN_TENSORS, +64) tensors of 1..300 values (so some hold a
 * whole float block of 256 and a tail) */
static void many_layout_make(many_layout *L, uint64_t *seed) {
    L->nt = MANY_MIN_TENSORS + test_rand_u64(seed) % 64;
    L->numel = malloc(L->nt * sizeof *L->numel);
    L->names = malloc(L->nt * sizeof *L->names);
    cr_assert(L->numel && L->names);
    L->n = 0;
    for (size_t t = 0; t < L->nt; t++) {
        L->numel[t] = 1 + test_rand_u64(seed) % 300;
        snprintf(L->names[t], sizeof L->names[t], "w%u", (unsigned)t);
        L->n += L->numel[t];
    }
}

static void many_layout_free(many_layout *L) {
    free(L->numel);
    free(L->names);
}

/* values (L->n floats) as a safetensors file, one 1-d tensor each */
static void many_write(const char *path, const many_layout *L, const float *values) {
    nawal_st_tensor *ts = calloc(L->nt, sizeof *ts);
    cr_assert(ts);
    size_t off = 0;
    for (size_t t = 0; t < L->nt; t++) {
        ts[t] = (nawal_st_tensor){.name = L->names[t], .dtype = NAWAL_ST_F32, .ndim = 1,
                                  .shape = {(int64_t)L->numel[t]}, .nbytes = L->numel[t] * 4, .data = values + off};
        off += L->numel[t];
    }
    char err[512] = "";
    cr_assert_eq(nawal_st_write(path, ts, L->nt, NULL, err, sizeof err), 0, "write %s: %s", path, err);
    free(ts);
}

/* the floats of a serialized model in L's layout */
static float *many_parse(const agg_membuf *m, const many_layout *L) {
    nawal_st_file *f;
    char err[512] = "";
    cr_assert_eq(nawal_st_parse(&f, m->p, m->len, "aggregate", err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_st_count(f), L->nt);
    float *v = malloc(L->n * 4);
    cr_assert(v);
    size_t off = 0;
    for (size_t t = 0; t < L->nt; t++) {
        const nawal_st_tensor *x = nawal_st_at(f, t);
        cr_assert_str_eq(x->name, L->names[t]);
        cr_assert_eq(x->nbytes, L->numel[t] * 4);
        memcpy(v + off, x->data, x->nbytes);
        off += L->numel[t];
    }
    nawal_st_free(f);
    return v;
}

/* Krum over a model of more than two batches of windows: the choice, the
 * dropped updates' scores and the result as brute force gives them, the
 * same for 1 and 3 threads; and an update with a non-finite value in the
 * last batch dropped, the verdicts and result those of the others alone. */
Test(coord_robust, krum_multi_batch_matches_brute_force) {
    uint64_t seed0 = test_seed("coord_robust.krum_multi_batch"), seed = seed0;
    for (int trial = 0; trial < 4; trial++) {
        many_layout L;
        many_layout_make(&L, &seed);
        size_t k = 4 + test_rand_u64(&seed) % 6;
        fixture f; /* only its arrays: the layout is L's */
        agg_fixture_make(&f, &seed, k, g_root);
        for (size_t i = 0; i < k; i++) {
            f.d[i] = realloc(f.d[i], L.n * 4);
            cr_assert(f.d[i]);
            agg_random(&seed, f.d[i], L.n, (float)ldexp(1.0, (int)(test_rand_u64(&seed) % 8) - 6));
            snprintf(f.paths[i], sizeof f.paths[i], "%s/many%zu.safetensors", g_root, i);
            many_write(f.paths[i], &L, f.d[i]);
        }
        f.base = realloc(f.base, L.n * 4);
        cr_assert(f.base);
        agg_random(&seed, f.base, L.n, 1.0f);
        many_write(f.base_path, &L, f.base);
        /* at least one update dropped (also when one is bad), so that a score is printed */
        long fo = trial == 0 ? -1 : (long)(test_rand_u64(&seed) % (k - 2));
        long mo = trial == 0 ? 0 : 1 + (long)(test_rand_u64(&seed) % (k - 2));
        if (trial == 0 && k < 5) fo = 1; /* the default f is 0 below 5 updates: none dropped */
        char name[64];
        krum_name(name, sizeof name, fo, mo);
        size_t bad = SIZE_MAX;
        if (trial == 3) { /* a NaN in a tensor of the last batch */
            bad = test_rand_u64(&seed) % k;
            size_t t = 2 * MANY_BATCH + test_rand_u64(&seed) % (L.nt - 2 * MANY_BATCH), e = 0;
            for (size_t q = 0; q < t; q++) e += L.numel[q];
            float keep = f.d[bad][e];
            f.d[bad][e] = NAN;
            many_write(f.paths[bad], &L, f.d[bad]);
            f.d[bad][e] = keep;
        }
        char (*why)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why);
        char (*why2)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why2);
        agg_membuf out, out2;
        cr_assert_eq(run_named(name, 1, &f, &out, why), 0);
        cr_assert_eq(run_named(name, 3, &f, &out2, why2), 0);
        check_same_run(name, &out, &out2, why, why2, k);
        if (bad != SIZE_MAX) { /* the others, in their order */
            cr_assert(strstr(why[bad], "not finite"), "%s: update %zu: %s (seed %llu)", name, bad, why[bad],
                      (unsigned long long)seed0);
            float *tmp = f.d[bad];
            for (size_t i = bad; i + 1 < k; i++) {
                f.d[i] = f.d[i + 1];
                memcpy(why[i], why[i + 1], sizeof why[i]);
            }
            f.d[k - 1] = tmp;
        }
        float *got = many_parse(&out, &L);
        check_krum(name, fo, mo, f.base, f.d, bad != SIZE_MAX ? k - 1 : k, L.n, why, got, seed0);
        free(got);
        free(out.p);
        free(out2.p);
        free(why);
        free(why2);
        fixture_free(&f);
        many_layout_free(&L);
    }
}

/* h honest updates near a common direction, b attackers: huge values of
 * random sign (or one far-off point they agree on) */
Test(coord_robust, byzantine_updates_do_not_move_robust_rules) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    size_t n = agg_total();
    for (int trial = 0; trial < 4; trial++) {
        size_t h = 5 + test_rand_u64(&seed) % 4, b = 1 + test_rand_u64(&seed) % 2, k = h + b;
        fixture f;
        fixture_make(&f, &seed, k);
        float *common = malloc(n * 4);
        agg_random(&seed, common, n, 0.01f);
        size_t *pos = malloc(k * sizeof *pos); /* attackers at random positions */
        for (size_t i = 0; i < k; i++) pos[i] = i;
        for (size_t i = k - 1; i > 0; i--) {
            size_t j = test_rand_u64(&seed) % (i + 1), t = pos[i];
            pos[i] = pos[j];
            pos[j] = t;
        }
        int *byz = calloc(k, sizeof *byz);
        for (size_t q = 0; q < b; q++) byz[pos[q]] = 1;
        float far = (float)(trial % 2 ? 1e6 : 1e30);
        for (size_t i = 0; i < k; i++) {
            for (size_t e = 0; e < n; e++)
                f.d[i][e] = byz[i] ? (trial % 2 ? far : (test_rand_u64(&seed) % 2 ? far : -far))
                                   : common[e] + 0.001f * test_rand_normal(&seed);
            agg_write(f.paths[i], f.d[i], AGG_OK);
            f.w[i] = byz[i] ? 1000000 : 10; /* attackers also claim many examples */
        }
        char trim[64], krum[64];
        snprintf(trim, sizeof trim, "trimmed-mean:%.3f", (double)b / (double)k);
        snprintf(krum, sizeof krum, "krum:%zu", b);
        const char *rules[] = {"median", trim, krum};
        for (int r = 0; r < 3; r++) {
            agg_membuf out;
            char (*why)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why);
            cr_assert_eq(run_named(rules[r], 2, &f, &out, why), 0);
            float *got = agg_parse(&out);
            for (size_t e = 0; e < n; e++) {
                float lo = INFINITY, hi = -INFINITY;
                for (size_t i = 0; i < k; i++)
                    if (!byz[i]) {
                        lo = fminf(lo, f.base[e] + f.d[i][e]);
                        hi = fmaxf(hi, f.base[e] + f.d[i][e]);
                    }
                float slack = ldexp(1.0, -22) * fmaxf(fabsf(lo), fabsf(hi));
                cr_assert(got[e] >= lo - slack && got[e] <= hi + slack,
                          "%s, %zu of %zu Byzantine: element %zu = %g outside the honest range [%g, %g] (seed %llu)",
                          rules[r], b, k, e, got[e], lo, hi, (unsigned long long)seed0);
            }
            if (r == 2)
                for (size_t i = 0; i < k; i++)
                    cr_assert_eq(why[i][0] != 0, byz[i], "Krum %s update %zu (%s): %s", byz[i] ? "chose" : "dropped",
                                 i, byz[i] ? "Byzantine" : "honest", why[i]);
            free(got);
            free(out.p);
            free(why);
        }
        /* the same updates do move FedAvg (this attack is not a no-op) */
        agg_membuf out;
        int rc = agg_run_fedavg(NULL, f.base_path, f.paths, f.w, k, &out, NULL);
        if (rc == 0) {
            float *got = agg_parse(&out);
            size_t moved = 0;
            for (size_t e = 0; e < n; e++) moved += fabsf(got[e] - f.base[e]) > 1000.0f;
            cr_assert(moved > n / 3, "FedAvg should be dragged away by the attackers (%zu of %zu moved)", moved, n);
            free(got);
            free(out.p);
        } else cr_assert_eq(rc, NAWAL_AGG_REJECTED, "FedAvg of 1e30 values overflows: refused, not a crash");
        free(common);
        free(pos);
        free(byz);
        fixture_free(&f);
    }
}

/* Frames are decoded whole (unsent entries 0) and then treated like the
 * dense updates; a bad frame is dropped with the codec's reason. */
Test(coord_robust, frames_mixed_with_dense_updates) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    for (int trial = 0; trial < 3; trial++) {
        size_t k = 3 + test_rand_u64(&seed) % 5;
        fixture f;
        fixture_make(&f, &seed, k);
        for (size_t i = 0; i < k; i++)
            if (test_rand_u64(&seed) % 2) {
                snprintf(f.paths[i], sizeof f.paths[i], "%s/frame%zu.nwdc", g_root, i);
                agg_write_frame(f.paths[i], f.d[i], test_rand_u64(&seed) % 2 ? 0.3f : 1.0f,
                                test_rand_u64(&seed) % 2 ? NAWAL_DELTA_F16 : NAWAL_DELTA_I8, &seed);
            }
        agg_membuf out;
        cr_assert_eq(run_named("median", 2, &f, &out, NULL), 0);
        float *got = agg_parse(&out);
        check_stat(got, &f, NULL, -1, "median over frames", seed0);
        free(got);
        free(out.p);

        /* a truncated frame: dropped with the codec's reason, the rest exactly as without it */
        size_t bad = test_rand_u64(&seed) % k;
        snprintf(f.paths[bad], sizeof f.paths[bad], "%s/bad%zu.nwdc", g_root, bad);
        float *keep = malloc(agg_total() * 4);
        agg_random(&seed, keep, agg_total(), 0.1f);
        agg_write_frame(f.paths[bad], keep, 0.3f, NAWAL_DELTA_F16, &seed);
        agg_truncate(f.paths[bad], 3);
        char (*why)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why);
        cr_assert_eq(run_named("trimmed-mean", 1, &f, &out, why), 0);
        cr_assert(why[bad][0], "the truncated frame is dropped");
        int *use = calloc(k, sizeof *use);
        for (size_t i = 0; i < k; i++) use[i] = i != bad;
        got = agg_parse(&out);
        check_stat(got, &f, use, 0.2, "trimmed mean without the bad frame", seed0);
        free(got);
        free(out.p);
        free(use);
        free(why);
        free(keep);
        fixture_free(&f);
    }
}

Test(coord_robust, nonfinite_update_dropped_result_as_without_it) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    const char *rules[] = {"median", "trimmed-mean:0.25", "krum:1"};
    for (int r = 0; r < 3; r++) {
        size_t k = 5 + test_rand_u64(&seed) % 3;
        fixture f;
        fixture_make(&f, &seed, k);
        size_t bad = test_rand_u64(&seed) % k, e = test_rand_u64(&seed) % agg_total();
        float keep = f.d[bad][e];
        f.d[bad][e] = test_rand_u64(&seed) % 2 ? NAN : -INFINITY;
        agg_write(f.paths[bad], f.d[bad], AGG_OK);
        char (*why)[NAWAL_AGG_REASON_BYTES] = calloc(k, sizeof *why);
        agg_membuf out, ref;
        cr_assert_eq(run_named(rules[r], 2, &f, &out, why), 0);
        cr_assert(strstr(why[bad], "not finite"), "%s: %s", rules[r], why[bad]);
        /* the same without the bad update (the others in their order) */
        f.d[bad][e] = keep;
        float *tmp = f.d[bad];
        for (size_t i = bad; i + 1 < k; i++) {
            memcpy(f.paths[i], f.paths[i + 1], sizeof f.paths[i]);
            f.d[i] = f.d[i + 1];
        }
        f.d[k - 1] = tmp;
        f.k = k - 1;
        cr_assert_eq(run_named(rules[r], 1, &f, &ref, NULL), 0);
        cr_assert(out.len == ref.len && memcmp(out.p, ref.p, out.len) == 0,
                  "%s: not the result of the others alone (seed %llu)", rules[r], (unsigned long long)seed0);
        free(ref.p);
        f.k = k;
        free(out.p);
        free(why);
        fixture_free(&f);
    }
}

Test(coord_robust, strategy_names_parsed_or_refused) {
    static const char *const good[] = {"median", "trimmed-mean", "trimmed-mean:0", "trimmed-mean:0.49",
                                       "trimmed-mean:1e-320", "krum",
                                       "krum:0", "krum:2", "krum:1:1", "fedavg", "fedavg-sparse"};
    static const char *const bad[] = {"median:1", "trimmed-mean:0.5", "trimmed-mean:-0.1", "trimmed-mean:x",
                                      "trimmed-mean:", "krum:-1", "krum:1:0", "krum:a", "krum:1:2:3", "krum:",
                                      "mediann", "Median", "krum1", "", "trimmed-mean:1e999", "trimmed-mean:nan"};
    char err[512];
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert_eq(nawal_aggregator_known(good[i], err, sizeof err), 0, "%s: %s", good[i], err);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        cr_assert_eq(nawal_aggregator_known(bad[i], err, sizeof err), -1, "'%s' accepted", bad[i]);
        cr_assert(err[0], "'%s' refused without a reason", bad[i]);
    }
    nawal_robust_options o;
    cr_assert_eq(nawal_robust_parse("trimmed-mean:0.125", &o, err, sizeof err), 1);
    cr_assert_eq(o.rule, NAWAL_ROBUST_TRIMMED_MEAN);
    cr_assert_eq(o.trim, 0.125);
    cr_assert_eq(nawal_robust_parse("krum:3:2", &o, err, sizeof err), 1);
    cr_assert(o.rule == NAWAL_ROBUST_KRUM && o.krum_f == 3 && o.krum_m == 2);
    cr_assert_eq(nawal_robust_parse("fedavg", &o, err, sizeof err), 0);
}

/* The round driver with a robust rule on a store holding dense updates
 * and frames: the median of the decoded updates, Krum's verdicts as the
 * round's, and no spill file left in the blob directory. */
Test(coord_robust, round_driver_with_robust_rules) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    const size_t k = 6;
    fixture f;
    fixture_make(&f, &seed, k);
    for (size_t i = 0; i < k; i += 2) {
        snprintf(f.paths[i], sizeof f.paths[i], "%s/frame%zu.nwdc", g_root, i);
        agg_write_frame(f.paths[i], f.d[i], 0.3f, NAWAL_DELTA_F16, &seed);
    }
    /* update 3 attacks */
    for (size_t e = 0; e < agg_total(); e++) f.d[3][e] = 1e4f;
    agg_write(f.paths[3], f.d[3], AGG_OK);
    char dir[300], err[512] = "";
    snprintf(dir, sizeof dir, "%s/coord", g_root);
    int64_t id;
    nawal_store *s = agg_store_round(g_root, &f, &id);
    nawal_agg_result res;
    nawal_agg_config cfg = {"median", 2};
    cr_assert_eq(nawal_round_aggregate(s, id, &cfg, 1, &res, err, sizeof err), 0, "%s", err);
    cr_assert(res.has_model, "%s", res.note);
    cr_assert_eq(res.n_accepted, k);
    float *got = agg_read_blob(s, res.model_cid);
    check_stat(got, &f, NULL, -1, "median through the round driver", seed0);
    free(got);
    nawal_agg_result_free(&res);

    cfg.strategy = "krum:1";
    cr_assert_eq(nawal_round_aggregate(s, id, &cfg, 1, &res, err, sizeof err), 0, "%s", err);
    cr_assert(res.has_model, "%s", res.note);
    cr_assert_eq(res.n_accepted, k - 1);
    cr_assert(!res.verdicts[3].accepted && strstr(res.verdicts[3].reason, "krum"), "%s", res.verdicts[3].reason);
    nawal_agg_result_free(&res);

    char blobs[400];
    snprintf(blobs, sizeof blobs, "%s/blobs", dir);
    DIR *dp = opendir(blobs);
    cr_assert(dp, "%s", blobs);
    struct dirent *de;
    while ((de = readdir(dp))) cr_assert(!strstr(de->d_name, "spill"), "spill file left: %s", de->d_name);
    closedir(dp);
    nawal_store_close(s);
    fixture_free(&f);
}

/* Frames are decoded where spill_dir says: an unusable one fails the
 * aggregation as the coordinator's error (-1), not as a verdict. */
Test(coord_robust, spill_dir_unusable_is_an_error) {
    uint64_t seed = fresh_seed();
    fixture f;
    fixture_make(&f, &seed, 3);
    snprintf(f.paths[1], sizeof f.paths[1], "%s/frame1.nwdc", g_root);
    agg_write_frame(f.paths[1], f.d[1], 0.3f, NAWAL_DELTA_F16, &seed);
    char err[512] = "", why[NAWAL_AGG_REASON_BYTES];
    nawal_aggregator *a;
    cr_assert_eq(nawal_aggregator_create(&a, "median", 1, "/nonexistent/spill", err, sizeof err), 0, "%s", err);
    nawal_tensor_source *base;
    cr_assert_eq(nawal_tensor_source_open_file(&base, f.base_path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a->begin(a, base, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < 3; i++) {
        nawal_tensor_source *d;
        nawal_delta_frame *fr;
        cr_assert_eq(nawal_update_open_file(&d, &fr, f.paths[i], why, sizeof why), 0, "%s", why);
        cr_assert_eq(fr ? a->add_frame(a, fr, 1, why, sizeof why) : a->add(a, d, 1, why, sizeof why), 0, "%s", why);
    }
    cr_assert_eq(a->finish(a, err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/spill") && strstr(err, "spill file"), "%s", err);
    cr_assert_neq(a->verdict(a, 0, why, sizeof why), 0, "no verdict after a failed finish");
    nawal_aggregator_destroy(a);
    nawal_tensor_source_close(base);
    fixture_free(&f);
}

/* Distances of far-off updates do not overflow: of two attackers at 1e20
 * and 3e19 in one element, Krum drops the farther, wherever it stands. */
Test(coord_robust, krum_ranks_huge_distances) {
    uint64_t seed = fresh_seed();
    fixture f;
    fixture_make(&f, &seed, 5);
    size_t e = test_rand_u64(&seed) % agg_total();
    f.d[0][e] = 1e20f; /* first: a tie would keep it */
    f.d[4][e] = 3e19f;
    agg_write(f.paths[0], f.d[0], AGG_OK);
    agg_write(f.paths[4], f.d[4], AGG_OK);
    char why[5][NAWAL_AGG_REASON_BYTES];
    agg_membuf out;
    cr_assert_eq(run_named("krum:1", 2, &f, &out, why), 0);
    cr_assert(why[0][0] && strstr(why[0], "krum"), "the update at 1e20 was kept: %s", why[0]);
    for (size_t i = 1; i < 5; i++) cr_assert(!why[i][0], "update %zu dropped: %s", i, why[i]);
    free(out.p);
    fixture_free(&f);
}
