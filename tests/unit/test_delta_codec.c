/* test_delta_codec.c - the compressed model delta (proto/delta_codec.h) and
 * the top-k selection op it runs on (ops.h topk_select, CPU backend).
 *
 * Fresh random inputs on every run (the seed is printed; replay with
 * NAWAL_TEST_SEED), sizes that are multiples of nothing, with ties.
 *   - topk_select against a brute-force top-k by sort (|x| descending, then
 *     index ascending), on small inputs and on inputs large enough for the
 *     sampling path, with heavy ties that force its fallback, on 1, 2 and 3
 *     threads; guard words after the output.
 *   - encode/decode: the decoded entries are exactly the brute-force top-k
 *     of x = delta + residual; fp32 values exact, fp16 within half an fp16
 *     ulp and int8 within half a step of its block (maxabs / 254, up to
 *     float rounding: bounds computed here, independently of the codec);
 *     zero elsewhere. Error feedback: the new
 *     residual is (delta + old residual) - decoded, computed here with the
 *     same float arithmetic, and decoded + residual == delta + old residual
 *     exactly (the codec keeps sent within a factor 2 of x, so the
 *     subtraction is exact).
 *   - accumulate == decode then axpy, bit for bit.
 *   - the documented layout: frames built here by hand (planes, varints,
 *     scales) decode to the expected values.
 *   - every kind of bad frame and bad encoder input is rejected with its
 *     message, and the output buffer (or the residual) is left untouched. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "delta_codec.h"
#include "ops.h"
#include "test_util.h"

static const nawal_ops *O;
static uint64_t g_seed, g_rng;
#define SEED ((unsigned long long)g_seed)
#define GUARD 8
#define GUARD_IDX 0xdeadbeefu

static void start(const char *who) {
    g_seed = test_seed(who);
    g_rng = g_seed;
    O = nawal_ops_cpu(0);
}

static size_t rnd(size_t lo, size_t hi) { return lo + (size_t)(test_rand_u64(&g_rng) % (hi - lo + 1)); }
static float nrm(void) { return test_rand_normal(&g_rng); }
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    cr_assert(p != NULL, "out of memory");
    return p;
}

/* ---------------------------------------------------------------- data */

enum { K_GAUSS, K_HEAVY, K_FEW, K_EQUAL, K_ZERO, K_SPARSE, K_NONFINITE, K_KINDS };
static const char *const kind_name[] = { "gaussian", "heavy-tailed", "few values", "equal magnitudes",
                                         "zeros", "sparse", "with inf/nan" };

static float draw(int kind, float scale) {
    switch (kind) {
    case K_GAUSS: return scale * nrm();
    case K_HEAVY: return scale * nrm() / (float)(test_rand_unit(&g_rng) + 0.01);
    case K_FEW: return scale * 0.5f * (float)((int)rnd(0, 4) - 2);
    case K_EQUAL: return rnd(0, 1) ? scale : -scale;
    case K_ZERO: return rnd(0, 1) ? 0.0f : -0.0f;
    case K_SPARSE: return rnd(0, 19) ? 0.0f : scale * nrm();
    default: {
        size_t r = rnd(0, 99);
        return r == 0 ? INFINITY : r == 1 ? -INFINITY : r == 2 ? NAN : r == 3 ? -NAN : scale * nrm();
    }
    }
}

static float *gen(size_t n, int kind, float scale) {
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = draw(kind, scale);
    return x;
}

/* ------------------------------------------------------ brute-force top-k */

static const float *g_bx;
/* |x| descending (NaN above everything, all NaNs equal), then index ascending */
static int cmp_mag(const void *a, const void *b) {
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float x = g_bx[i], y = g_bx[j];
    int nx = isnan(x), ny = isnan(y);
    if (nx != ny) return nx ? -1 : 1;
    if (!nx) {
        float ax = fabsf(x), ay = fabsf(y);
        if (ax != ay) return ax > ay ? -1 : 1;
    }
    return (i > j) - (i < j);
}
static int cmp_u32(const void *a, const void *b) {
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    return (i > j) - (i < j);
}
/* the k winners in increasing order; returns min(k, n) */
static size_t brute_topk(const float *x, size_t n, size_t k, uint32_t *out) {
    uint32_t *all = xmalloc(n * sizeof *all);
    for (size_t i = 0; i < n; i++) all[i] = (uint32_t)i;
    g_bx = x;
    qsort(all, n, sizeof *all, cmp_mag);
    if (k > n) k = n;
    memcpy(out, all, k * sizeof *out);
    qsort(out, k, sizeof *out, cmp_u32);
    free(all);
    return k;
}

/* ------------------------------------------------------------ topk op */

static void topk_case(size_t n, size_t k, int kind, int threads) {
    omp_set_num_threads(threads);
    float *x = gen(n, kind, 1.0f);
    uint32_t *want = xmalloc((n + 1) * sizeof *want), *got = xmalloc((k + GUARD) * sizeof *got);
    for (size_t i = 0; i < k + GUARD; i++) got[i] = GUARD_IDX;
    size_t wn = brute_topk(x, n, k, want);
    size_t gn = O->topk_select(O, got, x, n, k);
    cr_assert_eq(gn, wn, "topk n=%zu k=%zu %s, %d threads: returned %zu, want %zu (seed %llu)", n, k, kind_name[kind],
                 threads, gn, wn, SEED);
    for (size_t j = 0; j < wn; j++)
        cr_assert_eq(got[j], want[j], "topk n=%zu k=%zu %s, %d threads: entry %zu is index %u, want %u (seed %llu)", n, k,
                     kind_name[kind], threads, j, got[j], want[j], SEED);
    for (size_t j = wn; j < k + GUARD; j++)
        cr_assert_eq(got[j], GUARD_IDX, "topk n=%zu k=%zu: wrote past its %zu results (seed %llu)", n, k, wn, SEED);
    free(x);
    free(want);
    free(got);
}

Test(topk, small_inputs_match_brute_force) {
    start("topk.small");
    for (int r = 0; r < 300; r++) {
        size_t n = r % 3 ? rnd(1, 70) : rnd(100, 5000);
        size_t k;
        switch (r % 5) {
        case 0: k = 1; break;
        case 1: k = n > 1 ? n - 1 : 1; break;
        case 2: k = n + rnd(0, 5); break;
        default: k = rnd(1, n);
        }
        topk_case(n, k, (int)rnd(0, K_KINDS - 1), (int)rnd(1, 3));
    }
    omp_set_num_threads(2);
    uint32_t guard = GUARD_IDX;
    float x = 1.0f;
    cr_assert_eq(O->topk_select(O, &guard, &x, 1, 0), 0, "k = 0 selects nothing");
    cr_assert_eq(guard, GUARD_IDX, "k = 0 writes nothing");
}

/* large enough for the sample threshold (n >= 2^18); heavy ties and
 * sparse inputs overflow the candidate slices and take the fallback */
Test(topk, large_inputs_match_brute_force) {
    start("topk.large");
    const double ratios[] = { 0.001, 0.01, 0.05, 0.2 };
    for (int r = 0; r < 14; r++) {
        size_t n = rnd(262144, 400000);
        size_t k = (size_t)ceil(ratios[r % 4] * (double)n) + rnd(0, 3);
        int kind = r < 8 ? (r % 2 ? K_HEAVY : K_GAUSS) : (int)rnd(0, K_KINDS - 1);
        topk_case(n, k, kind, (int)rnd(1, 3));
    }
    omp_set_num_threads(2);
}

/* ------------------------------------------------------------ codec */

static uint8_t *encode_ok(const nawal_delta_params *p, const float *d, float *r, size_t n, size_t *len) {
    uint8_t *f = NULL;
    char err[256] = "";
    int rc = nawal_delta_encode(O, p, d, r, n, &f, len, err, sizeof err);
    cr_assert_eq(rc, 0, "encode n=%zu ratio %g values %d: %s (seed %llu)", n, (double)p->ratio, (int)p->values, err, SEED);
    cr_assert(f != NULL && *len > NAWAL_DELTA_HEADER_BYTES);
    return f;
}

/* |sent - x| bound for fp16 (round to nearest): half an ulp of x's binade,
 * or half the smallest subnormal (2^-25) below the normal range */
static double f16_bound(float x) {
    double a = fabs((double)x);
    if (a < 6.103515625e-05) return 2.98023223876953125e-08;
    return ldexp(1.0, (int)floor(log2(a)) - 11);
}

static const char *const value_name[] = { "f32", "f16", "i8" };

/* One encode/decode round with error feedback, every property checked. */
static void codec_case(size_t n, float ratio, nawal_delta_values values, uint32_t block, int kind, int with_residual) {
    nawal_delta_params p = { ratio, values, block, 0 };
    float *d = gen(n, kind, 1e-3f), *r0 = with_residual ? gen(n, K_GAUSS, 3e-4f) : NULL;
    float *r = NULL, *x = xmalloc(n * sizeof *x), *dec = xmalloc(n * sizeof *dec);
    if (with_residual) {
        r = xmalloc(n * sizeof *r);
        memcpy(r, r0, n * sizeof *r);
    }
    for (size_t i = 0; i < n; i++) x[i] = with_residual ? d[i] + r0[i] : d[i];
    size_t len;
    uint8_t *f = encode_ok(&p, d, r, n, &len);
    char err[256] = "";
    nawal_delta_info info;
    cr_assert_eq(nawal_delta_info_read(&info, f, len, err, sizeof err), 0, "%s", err);
    size_t k = ratio >= 1.0f ? n : (size_t)ceil((double)ratio * (double)n);
    cr_assert(info.n == n && info.k == k && info.values == values, "header: n %llu k %llu (want %zu, %zu)",
              (unsigned long long)info.n, (unsigned long long)info.k, n, k);
    cr_assert_eq(info.mode, ratio >= 1.0f ? NAWAL_DELTA_DENSE : NAWAL_DELTA_TOPK);
    cr_assert_eq(nawal_delta_decode(dec, n, f, len, err, sizeof err), 0, "decode: %s (seed %llu)", err, SEED);

    uint32_t *sel = xmalloc(n * sizeof *sel);
    brute_topk(x, n, k, sel);
    char *in = calloc(n, 1);
    for (size_t j = 0; j < k; j++) in[sel[j]] = 1;
    int exact_set = values == NAWAL_DELTA_F32;
    for (size_t i = 0; i < n; i++) exact_set &= x[i] != 0.0f;
    double maxabs = 0.0; /* int8: of the current block of selected entries */
    const char *what = value_name[values];
    for (size_t j = 0, i = 0; i < n; i++) {
        if (with_residual) {
            float want_r = x[i] - dec[i];
            cr_assert(r[i] == want_r, "%s ratio %g n=%zu: residual[%zu] = %.9g, want x - sent = %.9g - %.9g (seed %llu)",
                      what, (double)ratio, n, i, (double)r[i], (double)x[i], (double)dec[i], SEED);
            cr_assert(dec[i] + r[i] == x[i], "%s: sent + residual != delta + old residual at %zu (seed %llu)", what, i, SEED);
        }
        if (exact_set) cr_assert_eq(dec[i] != 0.0f, in[i], "f32 ratio %g n=%zu: entry %zu %s (seed %llu)", (double)ratio, n,
                                    i, in[i] ? "not sent" : "sent but not in the top-k", SEED);
        if (!in[i]) {
            cr_assert(dec[i] == 0.0f, "%s ratio %g n=%zu: entry %zu outside the top-k decodes to %g (seed %llu)", what,
                      (double)ratio, n, i, (double)dec[i], SEED);
            continue;
        }
        double err_i = fabs((double)dec[i] - (double)x[i]), bound = 0.0;
        if (values == NAWAL_DELTA_F16) bound = f16_bound(x[i]);
        if (values == NAWAL_DELTA_I8) {
            if (j % block == 0) { /* a new block of the selected entries, in index order */
                maxabs = 0.0;
                for (size_t t = j; t < j + block && t < k; t++) maxabs = fmax(maxabs, fabs((double)x[sel[t]]));
            }
            /* half a step, plus the float roundings of the step (times |q| <= 127), of x / step
             * and of q x step: each at most one ulp of maxabs (a seed hit the old relative 1e-5
             * slack, which is below one ulp of maxabs once multiplied out) */
            bound = maxabs / 254.0 + 4.0 * maxabs * 0x1p-24 + 1e-45;
        }
        cr_assert(err_i <= bound, "%s ratio %g n=%zu: entry %zu decodes to %.9g for %.9g: error %.3g > bound %.3g (seed %llu)",
                  what, (double)ratio, n, i, (double)dec[i], (double)x[i], err_i, bound, SEED);
        j++;
    }
    free(sel);
    free(in);
    free(f);
    free(d);
    free(r0);
    free(r);
    free(x);
    free(dec);
}

Test(delta_codec, roundtrip_and_error_feedback) {
    start("delta_codec.roundtrip");
    const float ratios[] = { 1.0f, 0.5f, 0.1f, 0.01f, 0.003f };
    for (int v = 0; v < 3; v++)
        for (int r = 0; r < 20; r++) {
            size_t n = r % 4 == 3 ? rnd(300000, 330000) : rnd(1, 5000);
            float ratio = r % 6 == 5 ? (float)test_rand_unit(&g_rng) * 0.9f + 0.001f : ratios[r % 5];
            uint32_t block = r % 3 == 0 ? (uint32_t)rnd(1, 1000) : 256;
            int kind = r % 7 == 6 ? K_FEW : r % 2 ? K_HEAVY : K_GAUSS;
            codec_case(n, ratio, (nawal_delta_values)v, block, kind, r % 5 != 4);
        }
}

/* several rounds of error feedback: the residual carries over */
Test(delta_codec, error_feedback_over_rounds) {
    start("delta_codec.rounds");
    size_t n = rnd(20000, 40000);
    nawal_delta_params p = { 0.01f, NAWAL_DELTA_I8, 256, 0 };
    float *r = calloc(n, sizeof *r), *x = xmalloc(n * sizeof *x), *dec = xmalloc(n * sizeof *dec);
    for (int round = 0; round < 6; round++) {
        float *d = gen(n, K_HEAVY, 1e-3f);
        for (size_t i = 0; i < n; i++) x[i] = d[i] + r[i];
        size_t len;
        uint8_t *f = encode_ok(&p, d, r, n, &len);
        char err[256];
        cr_assert_eq(nawal_delta_decode(dec, n, f, len, err, sizeof err), 0, "%s", err);
        for (size_t i = 0; i < n; i++)
            cr_assert(r[i] == x[i] - dec[i] && dec[i] + r[i] == x[i], "round %d entry %zu: sent %.9g + residual %.9g != %.9g (seed %llu)",
                      round, i, (double)dec[i], (double)r[i], (double)x[i], SEED);
        free(f);
        free(d);
    }
    free(r);
    free(x);
    free(dec);
}

/* values near and below FLT_MIN, where a block's 127 / max|x| overflows
 * (a fuzzer finding: int8 values came out with the wrong sign) */
Test(delta_codec, tiny_values) {
    start("delta_codec.tiny");
    for (int v = 0; v < 3; v++)
        for (int r = 0; r < 20; r++) {
            size_t n = rnd(1, 600);
            float *d = xmalloc(n * sizeof *d), *res = xmalloc(n * sizeof *res), *x = xmalloc(n * sizeof *x);
            float *dec = xmalloc(n * sizeof *dec);
            for (size_t i = 0; i < n; i++) {
                d[i] = ldexpf(nrm(), -(int)rnd(120, 150));
                res[i] = rnd(0, 1) ? ldexpf(nrm(), -(int)rnd(125, 149)) : 0.0f;
                x[i] = d[i] + res[i];
            }
            nawal_delta_params p = { r % 2 ? 1.0f : 0.3f, (nawal_delta_values)v, (uint32_t)rnd(1, 8), 0 };
            size_t len;
            uint8_t *f = encode_ok(&p, d, res, n, &len);
            char err[256];
            cr_assert_eq(nawal_delta_decode(dec, n, f, len, err, sizeof err), 0, "%s", err);
            for (size_t i = 0; i < n; i++) {
                cr_assert(dec[i] == 0.0f || (dec[i] > 0.0f) == (x[i] > 0.0f), "%s: %a sent as %a (seed %llu)", value_name[v],
                          (double)x[i], (double)dec[i], SEED);
                cr_assert(res[i] == x[i] - dec[i] && dec[i] + res[i] == x[i], "%s: %a = %a sent + %a residual (seed %llu)",
                          value_name[v], (double)x[i], (double)dec[i], (double)res[i], SEED);
            }
            free(f);
            free(d);
            free(res);
            free(x);
            free(dec);
        }
}

Test(delta_codec, accumulate_equals_decode_then_axpy) {
    start("delta_codec.accumulate");
    const float ratios[] = { 1.0f, 0.2f, 0.01f };
    for (int v = 0; v < 3; v++)
        for (int r = 0; r < 3; r++) {
            size_t n = rnd(1000, 70000);
            nawal_delta_params p = { ratios[r], (nawal_delta_values)v, (uint32_t)rnd(1, 300), 0 };
            float *d = gen(n, K_HEAVY, 1e-3f), *acc = gen(n, K_GAUSS, 1.0f);
            float *a1 = xmalloc(n * sizeof *a1), *a2 = xmalloc(n * sizeof *a2), *dec = xmalloc(n * sizeof *dec);
            memcpy(a1, acc, n * sizeof *a1);
            memcpy(a2, acc, n * sizeof *a2);
            float w = (float)test_rand_unit(&g_rng) * 2.0f - 0.5f;
            size_t len;
            uint8_t *f = encode_ok(&p, d, NULL, n, &len);
            char err[256];
            float *ws = calloc(n, sizeof *ws);
            cr_assert(ws);
            cr_assert_eq(nawal_delta_accumulate(a1, ws, n, w, f, len, err, sizeof err), 0, "%s", err);
            cr_assert_eq(nawal_delta_decode(dec, n, f, len, err, sizeof err), 0, "%s", err);
            O->axpy(O, a2, w, dec, n);
            size_t counted = 0;
            for (size_t i = 0; i < n; i++) {
                cr_assert(memcmp(&a1[i], &a2[i], sizeof(float)) == 0,
                          "%s ratio %g: accumulate gives %.9g at %zu, decode + axpy %.9g (seed %llu)", value_name[v],
                          (double)ratios[r], (double)a1[i], i, (double)a2[i], SEED);
                cr_assert(ws[i] == 0.0f || ws[i] == w, "weight sum %g at %zu is neither 0 nor %g", (double)ws[i], i, (double)w);
                cr_assert(dec[i] == 0.0f || ws[i] == w, "entry %zu sent (%g) but not counted", i, (double)dec[i]);
                counted += ws[i] == w;
            }
            cr_assert_eq(counted, (size_t)nawal_delta_topk_count(n, ratios[r]), "entries counted in wsum (seed %llu)", SEED);
            free(ws);
            free(f);
            free(d);
            free(acc);
            free(a1);
            free(a2);
            free(dec);
        }
}

Test(delta_codec, deterministic_across_threads) {
    start("delta_codec.deterministic");
    size_t n = rnd(300000, 350000);
    float *d = gen(n, K_HEAVY, 1e-3f);
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    size_t l1, l2;
    omp_set_num_threads(1);
    uint8_t *f1 = encode_ok(&p, d, NULL, n, &l1);
    omp_set_num_threads(2);
    uint8_t *f2 = encode_ok(&p, d, NULL, n, &l2);
    cr_assert(l1 == l2 && memcmp(f1, f2, l1) == 0, "frames differ between 1 and 2 threads (seed %llu)", SEED);
    free(f1);
    free(f2);
    free(d);
}

Test(delta_codec, topk_count) {
    cr_assert_eq(nawal_delta_topk_count(1000, 0.01f), 10);
    cr_assert_eq(nawal_delta_topk_count(124000000, 0.01f), 1240000);
    cr_assert_eq(nawal_delta_topk_count(1001, 0.01f), 11); /* 10.01 rounds up */
    cr_assert_eq(nawal_delta_topk_count(1, 1e-9f), 1);
    cr_assert_eq(nawal_delta_topk_count(77, 1.0f), 77);
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    cr_assert(p.ratio == 0.01f && p.values == NAWAL_DELTA_F16 && p.block == 256);
}

/* ------------------------------------------------ frames built by hand */

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }
static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

typedef struct {
    uint8_t magic0, version, mode, values, reserved;
    uint64_t n, k;
    float ratio;
    uint32_t block;
} hdr;

/* header + zstd frame of payload[0..plen); size_flag 0 leaves the content size out */
static uint8_t *make_frame(const hdr *h, const uint8_t *payload, size_t plen, int size_flag, size_t *len) {
    size_t cap = 32 + ZSTD_compressBound(plen);
    uint8_t *f = xmalloc(cap);
    memcpy(f, "NWDC", 4);
    f[0] = h->magic0 ? h->magic0 : 'N';
    f[4] = h->version;
    f[5] = h->mode;
    f[6] = h->values;
    f[7] = h->reserved;
    put64(f + 8, h->n);
    put64(f + 16, h->k);
    put32(f + 24, fbits(h->ratio));
    put32(f + 28, h->block);
    ZSTD_CCtx *c = ZSTD_createCCtx();
    cr_assert(c != NULL);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, size_flag);
    size_t z;
    if (size_flag) z = ZSTD_compress2(c, f + 32, cap - 32, payload, plen);
    else { /* streamed without a pledged size: the frame header has no content size */
        ZSTD_inBuffer in = { payload, plen, 0 };
        ZSTD_outBuffer out = { f + 32, cap - 32, 0 };
        z = ZSTD_compressStream2(c, &out, &in, ZSTD_e_end);
        cr_assert(z == 0, "zstd stream end");
        z = out.pos;
    }
    cr_assert(!ZSTD_isError(z), "zstd: %s", ZSTD_getErrorName(z));
    ZSTD_freeCCtx(c);
    *len = 32 + z;
    return f;
}

/* LEB128 */
static size_t varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    do {
        p[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) p[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

/* A top-k frame of n = 1000, ratio 0.005 (k = 5) by hand: indices
 * idx[0..5) (as given, gaps taken as is), values as raw per-entry bytes. */
typedef struct {
    uint8_t p[4096];
    size_t len;
} payload;

static void pay_planes(payload *pl, const uint32_t *v, int bytes, size_t k) {
    for (int b = 0; b < bytes; b++)
        for (size_t j = 0; j < k; j++) pl->p[pl->len++] = (uint8_t)(v[j] >> (8 * b));
}
static void pay_gaps(payload *pl, const uint64_t *gaps, size_t k) {
    for (size_t j = 0; j < k; j++) pl->len += varint(pl->p + pl->len, gaps[j]);
}

static const hdr H_F16 = { 0, 1, NAWAL_DELTA_TOPK, NAWAL_DELTA_F16, 0, 1000, 5, 0.005f, 0 };

Test(delta_codec, layout_built_by_hand_decodes) {
    /* fp16 top-k: 1.0 (0x3c00) at 3, -2.5 (0xc100) at 130 (gap 127: 1 byte),
     * 2^-24 (0x0001) at 400 (gap 270: 2 bytes), 65504 (0x7bff) at 401, -0 at 999 */
    payload pl = { .len = 0 };
    uint32_t vals[5] = { 0x3c00, 0xc100, 0x0001, 0x7bff, 0x8000 };
    uint64_t gaps[5] = { 3, 127, 270, 1, 598 };
    pay_planes(&pl, vals, 2, 5);
    pay_gaps(&pl, gaps, 5);
    size_t len;
    uint8_t *f = make_frame(&H_F16, pl.p, pl.len, 1, &len);
    float out[1000], acc[1000];
    for (int i = 0; i < 1000; i++) out[i] = 7.0f, acc[i] = 1.0f;
    char err[256] = "";
    cr_assert_eq(nawal_delta_decode(out, 1000, f, len, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_delta_accumulate(acc, NULL, 1000, 2.0f, f, len, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 1000; i++) {
        float want = i == 3 ? 1.0f : i == 130 ? -2.5f : i == 400 ? 5.9604644775390625e-8f : i == 401 ? 65504.0f : 0.0f;
        cr_assert(out[i] == want, "entry %d: %g, want %g", i, (double)out[i], (double)want);
        cr_assert(acc[i] == 1.0f + 2.0f * want, "accumulated entry %d: %g", i, (double)acc[i]);
    }
    cr_assert(signbit(out[999]), "-0 decodes to -0");
    free(f);

    /* int8 top-k, block 2: scales 0.5 and 0.25, values 127, -1 | 3, 0 | -127 */
    hdr h = { 0, 1, NAWAL_DELTA_TOPK, NAWAL_DELTA_I8, 0, 1000, 5, 0.005f, 2 };
    pl.len = 0;
    uint32_t sc[3] = { fbits(0.5f), fbits(0.25f), fbits(1.0f) }, q[5] = { 127, 0xff, 3, 0, 0x81 };
    uint64_t g2[5] = { 0, 1, 1, 1, 996 };
    pay_planes(&pl, sc, 4, 1);
    pay_planes(&pl, sc + 1, 4, 1);
    pay_planes(&pl, sc + 2, 4, 1);
    pay_planes(&pl, q, 1, 5);
    pay_gaps(&pl, g2, 5);
    f = make_frame(&h, pl.p, pl.len, 1, &len);
    cr_assert_eq(nawal_delta_decode(out, 1000, f, len, err, sizeof err), 0, "%s", err);
    cr_assert(out[0] == 63.5f && out[1] == -0.5f && out[2] == 0.75f && out[3] == 0.0f && out[999] == -127.0f,
              "int8: %g %g %g %g %g", (double)out[0], (double)out[1], (double)out[2], (double)out[3], (double)out[999]);
    free(f);

    /* dense fp32: planes of 1.5, -3, 1e-30 */
    hdr hd = { 0, 1, NAWAL_DELTA_DENSE, NAWAL_DELTA_F32, 0, 3, 3, 1.0f, 0 };
    pl.len = 0;
    uint32_t fv[3] = { fbits(1.5f), fbits(-3.0f), fbits(1e-30f) };
    pay_planes(&pl, fv, 4, 3);
    f = make_frame(&hd, pl.p, pl.len, 1, &len);
    cr_assert_eq(nawal_delta_decode(out, 3, f, len, err, sizeof err), 0, "%s", err);
    cr_assert(out[0] == 1.5f && out[1] == -3.0f && out[2] == 1e-30f);
    free(f);
}

/* the encoder writes that layout: header fields, planes and varints */
Test(delta_codec, encoder_writes_the_documented_layout) {
    start("delta_codec.layout");
    float d[300] = { 0 };
    d[7] = 1.0f, d[8] = -2.0f, d[299] = 0.5f;
    nawal_delta_params p = { 0.01f, NAWAL_DELTA_F16, 0, 0 }; /* k = 3 */
    size_t len;
    uint8_t *f = encode_ok(&p, d, NULL, 300, &len);
    uint8_t h[32] = { 'N', 'W', 'D', 'C', 1, NAWAL_DELTA_TOPK, NAWAL_DELTA_F16, 0 };
    put64(h + 8, 300);
    put64(h + 16, 3);
    put32(h + 24, fbits(0.01f));
    put32(h + 28, 0);
    cr_assert(memcmp(f, h, 32) == 0, "header bytes");
    uint8_t pl[64];
    size_t got = ZSTD_decompress(pl, sizeof pl, f + 32, len - 32);
    /* fp16 1, -2, 0.5 = 0x3c00, 0xc000, 0x3800: low bytes, then high bytes;
     * then indices 7, gap 1, gap 291 = 0xa3 0x02 */
    const uint8_t want[10] = { 0x00, 0x00, 0x00, 0x3c, 0xc0, 0x38, 7, 1, 0xa3, 0x02 };
    cr_assert(!ZSTD_isError(got) && got == sizeof want, "payload of %zu bytes", got);
    cr_assert(memcmp(pl, want, sizeof want) == 0, "payload bytes differ from the documented layout");
    free(f);
}

/* ------------------------------------------------------- bad frames */

#define BAD_N 1000
/* decode and accumulate both refuse the frame with a message containing
 * `want`, leaving their output untouched */
static void expect_reject(const uint8_t *f, size_t len, size_t n, const char *want, const char *what) {
    float *out = xmalloc(n * sizeof *out), *copy = xmalloc(n * sizeof *copy);
    for (size_t i = 0; i < n; i++) out[i] = (float)i + 0.25f;
    memcpy(copy, out, n * sizeof *out);
    char err[256] = "";
    int rc = nawal_delta_decode(out, n, f, len, err, sizeof err);
    cr_assert_eq(rc, -1, "%s: decode accepted a bad frame", what);
    cr_assert(err[0] && (!want || strstr(err, want)), "%s: decode says \"%s\", expected \"%s\"", what, err, want ? want : "");
    cr_assert(memcmp(out, copy, n * sizeof *out) == 0, "%s: decode wrote to its output", what);
    err[0] = 0;
    rc = nawal_delta_accumulate(out, NULL, n, 0.5f, f, len, err, sizeof err);
    cr_assert_eq(rc, -1, "%s: accumulate accepted a bad frame", what);
    cr_assert(err[0] && (!want || strstr(err, want)), "%s: accumulate says \"%s\", expected \"%s\"", what, err,
              want ? want : "");
    cr_assert(memcmp(out, copy, n * sizeof *out) == 0, "%s: accumulate wrote to its accumulator", what);
    free(out);
    free(copy);
}

/* a valid fp16 top-k frame of BAD_N (k = 5): the base of the header cases */
static uint8_t *good_f16(size_t *len) {
    payload pl = { .len = 0 };
    uint32_t vals[5] = { 0x3c00, 0xc100, 0x0001, 0x7bff, 0x8000 };
    uint64_t gaps[5] = { 3, 127, 270, 1, 598 };
    pay_planes(&pl, vals, 2, 5);
    pay_gaps(&pl, gaps, 5);
    return make_frame(&H_F16, pl.p, pl.len, 1, len);
}

Test(delta_codec, bad_headers_rejected) {
    size_t len;
    uint8_t *good = good_f16(&len), *f = xmalloc(len + 16);
    float out[BAD_N];
    char err[256];
    cr_assert_eq(nawal_delta_decode(out, BAD_N, good, len, err, sizeof err), 0, "the base frame is valid: %s", err);
    for (size_t l = 0; l < len; l++) expect_reject(good, l, BAD_N, l < 32 ? "truncated" : NULL, "truncated frame");
    expect_reject(NULL, 0, BAD_N, "truncated", "no frame");

#define MUTATE(stmt, want, what)                  \
    do {                                          \
        memcpy(f, good, len);                     \
        stmt;                                     \
        expect_reject(f, len, BAD_N, want, what); \
    } while (0)
    MUTATE(f[0] = 'X', "bad magic", "magic");
    MUTATE(f[4] = 2, "version 2 not supported", "version");
    MUTATE(f[5] = 2, "unknown mode 2", "mode");
    MUTATE(f[6] = 3, "unknown value encoding 3", "value encoding");
    MUTATE(f[7] = 1, "reserved header byte is 1", "reserved byte");
    MUTATE(put64(f + 8, 0), "model length 0 out of range", "n = 0");
    MUTATE(put64(f + 8, (uint64_t)1 << 33), "out of range", "n = 2^33");
    MUTATE(put64(f + 16, BAD_N + 1), "k = 1001 entries but the model has only n = 1000", "k > n");
    MUTATE(put64(f + 16, 6), "k = 6 does not match ceil(ratio 0.005 x n 1000) = 5", "k inconsistent");
    MUTATE(put32(f + 24, fbits(NAN)), "ratio nan is not in (0, 1]", "ratio NaN");
    MUTATE(put32(f + 24, fbits(0.0f)), "is not in (0, 1]", "ratio 0");
    MUTATE(put32(f + 24, fbits(1.5f)), "is not in (0, 1]", "ratio 1.5");
    MUTATE(put32(f + 24, fbits(1.0f)), "top-k with ratio 1", "top-k, ratio 1");
    MUTATE(f[5] = NAWAL_DELTA_DENSE, "dense with ratio 0.005", "dense, ratio < 1");
    MUTATE(put32(f + 28, 4), "block size 4 given for non-int8 values", "block for fp16");
    MUTATE(f[6] = NAWAL_DELTA_I8, "int8 block size 0 out of range", "int8 block 0");
    MUTATE((f[6] = NAWAL_DELTA_I8, put32(f + 28, 65537)), "int8 block size 65537 out of range", "int8 block too big");
#undef MUTATE
    /* the model it is for */
    float *big = xmalloc((BAD_N + 1) * sizeof *big);
    for (int i = 0; i <= BAD_N; i++) big[i] = 3.0f;
    cr_assert_eq(nawal_delta_decode(big, BAD_N + 1, good, len, err, sizeof err), -1);
    cr_assert(strstr(err, "model of 1000 values, this one has 1001"), "%s", err);
    cr_assert(big[0] == 3.0f && big[BAD_N] == 3.0f);
    free(big);
    /* a non-finite weight */
    cr_assert_eq(nawal_delta_accumulate(out, NULL, BAD_N, NAN, good, len, err, sizeof err), -1);
    cr_assert(strstr(err, "weight nan is not finite"), "%s", err);
    free(f);
    free(good);
}

Test(delta_codec, bad_zstd_rejected) {
    size_t len;
    uint8_t *good = good_f16(&len), *f = xmalloc(len + 64);
    /* trailing garbage, and a second zstd frame */
    memcpy(f, good, len);
    f[len] = 0;
    expect_reject(f, len + 1, BAD_N, "1 trailing byte(s) after the zstd frame", "one trailing byte");
    memcpy(f + len, good + 32, len - 32);
    expect_reject(f, len + len - 32, BAD_N, "trailing byte(s) after the zstd frame", "two zstd frames");
    /* not zstd at all */
    memcpy(f, good, 32);
    memcpy(f + 32, "this is not a zstd frame", 24);
    expect_reject(f, 56, BAD_N, "zstd:", "not zstd");
    /* a corrupted block: the declared size is kept, the content is garbage */
    for (size_t at = 32 + 6; at < len; at++) {
        memcpy(f, good, len);
        f[at] ^= 0x5a;
        float out[BAD_N];
        char err[256];
        if (nawal_delta_decode(out, BAD_N, f, len, err, sizeof err) != 0) expect_reject(f, len, BAD_N, NULL, "flipped byte");
    }
    /* no content size in the zstd frame */
    payload pl = { .len = 0 };
    uint32_t vals[5] = { 1, 2, 3, 4, 5 };
    uint64_t gaps[5] = { 1, 1, 1, 1, 1 };
    pay_planes(&pl, vals, 2, 5);
    pay_gaps(&pl, gaps, 5);
    size_t l2;
    uint8_t *g = make_frame(&H_F16, pl.p, pl.len, 0, &l2);
    expect_reject(g, l2, BAD_N, "does not declare its size", "no content size");
    free(g);
    /* decompression bombs: a tiny frame declaring 10 MB (k = 5 allows 15 .. 35 bytes) */
    uint8_t *zeros = calloc(10000000, 1);
    g = make_frame(&H_F16, zeros, 10000000, 1, &l2);
    cr_assert(l2 < 2000, "10 MB of zeros compress to %zu bytes", l2);
    expect_reject(g, l2, BAD_N, "payload of 10000000 bytes, expected 15 .. 35 for k = 5", "size bomb");
    free(g);
    g = make_frame(&H_F16, zeros, 14, 1, &l2);
    expect_reject(g, l2, BAD_N, "payload of 14 bytes, expected 15 .. 35", "payload too short");
    free(g);
    hdr hd = { 0, 1, NAWAL_DELTA_DENSE, NAWAL_DELTA_F32, 0, BAD_N, BAD_N, 1.0f, 0 };
    g = make_frame(&hd, zeros, 4 * BAD_N + 1, 1, &l2);
    expect_reject(g, l2, BAD_N, "payload of 4001 bytes, expected 4000 .. 4000", "dense payload too long");
    free(g);
    free(zeros);
    free(f);
    free(good);
}

/* a frame of BAD_N with a payload built from values and raw index bytes */
static void expect_payload_reject(const hdr *h, const uint8_t *pre, size_t prelen, const uint8_t *idx, size_t idxlen,
                                  const char *want, const char *what) {
    uint8_t p[512];
    memcpy(p, pre, prelen);
    memcpy(p + prelen, idx, idxlen);
    size_t len;
    uint8_t *f = make_frame(h, p, prelen + idxlen, 1, &len);
    expect_reject(f, len, (size_t)h->n, want, what);
    free(f);
}

Test(delta_codec, bad_payloads_rejected) {
    uint8_t v16[10] = { 0 }; /* five fp16 zeros */
    uint8_t ok_idx[5] = { 3, 1, 1, 1, 1 };
    /* indices */
    const struct { uint8_t b[16]; size_t len; const char *want, *what; } ix[] = {
        { { 3, 1, 1, 1, 0xe2, 0x07 }, 6, "index 1000 of entry 4 out of range (n = 1000)", "index = n" },
        { { 0xe7, 0x07, 1, 1, 1, 1 }, 6, "index 1000 of entry 1 out of range", "first index 999: the next is n" },
        { { 3, 1, 0, 1, 1 }, 5, "indices not strictly increasing at entry 2", "repeated index" },
        { { 3, 0x80, 0x00, 1, 1, 1 }, 6, "index 1 is not in shortest form", "overlong varint" },
        { { 3, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1 }, 10, "index 2 is longer than 5 bytes", "6-byte varint" },
        { { 3, 1, 1, 1, 0x81 }, 5, "index 4 runs past the end of the payload", "truncated varint" },
        { { 3, 1, 1, 1, 1, 1 }, 6, "1 trailing byte(s) after the last index", "extra index byte" },
        { { 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1, 1, 1 }, 9, "out of range", "index 2^32 - 1" },
    };
    for (size_t c = 0; c < sizeof ix / sizeof ix[0]; c++)
        expect_payload_reject(&H_F16, v16, sizeof v16, ix[c].b, ix[c].len, ix[c].want, ix[c].what);
    /* fp16 values: infinity and NaN, either sign */
    const uint16_t bad16[] = { 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff };
    for (size_t c = 0; c < sizeof bad16 / sizeof bad16[0]; c++) {
        uint8_t v[10] = { 0 };
        v[2] = (uint8_t)bad16[c], v[5 + 2] = (uint8_t)(bad16[c] >> 8);
        expect_payload_reject(&H_F16, v, sizeof v, ok_idx, 5, "value 2 is infinite or NaN", "fp16 inf/nan");
    }
    /* fp32 values */
    hdr h32 = H_F16;
    h32.values = NAWAL_DELTA_F32;
    const float bad32[] = { INFINITY, -INFINITY, NAN, -NAN };
    for (size_t c = 0; c < sizeof bad32 / sizeof bad32[0]; c++) {
        uint8_t v[20] = { 0 };
        uint32_t u = fbits(bad32[c]);
        for (int b = 0; b < 4; b++) v[5 * b + 4] = (uint8_t)(u >> (8 * b));
        expect_payload_reject(&h32, v, sizeof v, ok_idx, 5, "value 4 is infinite or NaN", "fp32 inf/nan");
    }
    /* int8 values and scales (block 4: two scales) */
    hdr h8 = H_F16;
    h8.values = NAWAL_DELTA_I8;
    h8.block = 4;
    uint8_t v8[13] = { 0 };
    put32(v8, fbits(1.0f));
    put32(v8 + 4, fbits(1.0f));
    v8[8 + 1] = 0x80;
    expect_payload_reject(&h8, v8, sizeof v8, ok_idx, 5, "int8 value 1 is -128", "int8 -128");
    const float bad_scale[] = { NAN, INFINITY, -1.0f, -0.0f, 1e37f };
    for (size_t c = 0; c < sizeof bad_scale / sizeof bad_scale[0]; c++) {
        memset(v8, 0, sizeof v8);
        put32(v8, fbits(1.0f));
        put32(v8 + 4, fbits(bad_scale[c]));
        expect_payload_reject(&h8, v8, sizeof v8, ok_idx, 5, "scale 1 is", "bad scale");
    }
    /* and the same payload with good scales and values is accepted */
    memset(v8, 0, sizeof v8);
    put32(v8, fbits(1.0f));
    put32(v8 + 4, fbits(0.0f));
    uint8_t p[64];
    memcpy(p, v8, sizeof v8);
    memcpy(p + sizeof v8, ok_idx, 5);
    size_t len;
    uint8_t *f = make_frame(&h8, p, sizeof v8 + 5, 1, &len);
    float out[BAD_N];
    char err[256];
    cr_assert_eq(nawal_delta_decode(out, BAD_N, f, len, err, sizeof err), 0, "the control frame is valid: %s", err);
    free(f);
}

/* ------------------------------------------------ encoder refusals */

Test(delta_codec, encoder_rejects_bad_input) {
    start("delta_codec.encode_errors");
    size_t n = rnd(1000, 5000);
    float *d = gen(n, K_GAUSS, 1e-3f), *r = gen(n, K_GAUSS, 1e-4f), *rc = xmalloc(n * sizeof *rc);
    memcpy(rc, r, n * sizeof *rc);
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    uint8_t *f = (uint8_t *)1;
    size_t len = 1;
    char err[256];
#define REFUSE(call, want)                                                                            \
    do {                                                                                              \
        err[0] = 0;                                                                                   \
        cr_assert_eq(call, -1, "accepted: %s", #call);                                                \
        cr_assert(strstr(err, want), "%s says \"%s\", expected \"%s\"", #call, err, want);            \
        cr_assert(f == NULL && len == 0, "no frame on error");                                        \
        cr_assert(memcmp(r, rc, n * sizeof *r) == 0, "%s changed the residual (seed %llu)", #call, SEED); \
        f = (uint8_t *)1, len = 1;                                                                    \
    } while (0)
    size_t at = rnd(0, n - 1);
    float keep = d[at];
    const float nonfinite[] = { NAN, INFINITY, -INFINITY };
    for (int c = 0; c < 3; c++) {
        d[at] = nonfinite[c];
        REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "the delta has a NaN or infinite value");
    }
    d[at] = keep;
    r[at] = NAN, rc[at] = NAN;
    REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "the residual has a NaN or infinite value");
    r[at] = rc[at] = 1e-4f;
    d[at] = 3e38f;
    REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "too large");
    d[at] = keep;
    const float bad_ratio[] = { 0.0f, -0.5f, 1.5f, NAN };
    for (int c = 0; c < 4; c++) {
        p.ratio = bad_ratio[c];
        REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "is not in (0, 1]");
    }
    nawal_delta_params_default(&p);
    p.values = (nawal_delta_values)3;
    REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "unknown value encoding 3");
    p.values = NAWAL_DELTA_I8;
    p.block = NAWAL_DELTA_MAX_BLOCK + 1;
    REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "block size 65537 out of range");
    nawal_delta_params_default(&p);
    p.zstd_level = 1000;
    REFUSE(nawal_delta_encode(O, &p, d, r, n, &f, &len, err, sizeof err), "zstd level 1000 out of range");
    nawal_delta_params_default(&p);
    REFUSE(nawal_delta_encode(O, &p, d, r, 0, &f, &len, err, sizeof err), "model length 0 out of range");
    REFUSE(nawal_delta_encode(NULL, &p, d, r, n, &f, &len, err, sizeof err), "no backend");
#undef REFUSE
    free(d);
    free(r);
    free(rc);
}
