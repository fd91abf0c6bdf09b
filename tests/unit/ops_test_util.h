/* ops_test_util.h - what the CPU op tests share: the backend under test
 * (O), this test's seed and generator, random host data, and backend
 * buffers with guard words after them (dnew poisons with NaN where no host
 * data is given; ddone checks the guards and frees). Include after
 * criterion.h and test_util.h. */
#ifndef NAWAL_OPS_TEST_UTIL_H
#define NAWAL_OPS_TEST_UTIL_H

#include "ops.h"
#include <math.h>
#include <stdlib.h>

static const nawal_ops *O;
static uint64_t g_seed; /* this test's seed, quoted in every failure message */
static uint64_t g_rng;  /* generator state, starts at g_seed */

#define SEED ((unsigned long long)g_seed)
#define GUARD 16
#define GUARD_VAL (-12345.678f)

static inline void start(const char *who) {
    g_seed = test_seed(who);
    g_rng = g_seed;
    O = nawal_ops_cpu(0);
}

static inline int rnd(int lo, int hi) { return lo + test_rand_int(&g_rng, hi - lo + 1); }
static inline float nrm(void) { return test_rand_normal(&g_rng); }
static inline double unif(double lo, double hi) { return lo + (hi - lo) * test_rand_unit(&g_rng); }

static inline void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    cr_assert(p != NULL, "out of memory");
    return p;
}
static inline float *hf(size_t n) { return xcalloc(n, sizeof(float)); }
static inline double *hd(size_t n) { return xcalloc(n, sizeof(double)); }
static inline float *hrandn(size_t n, float scale) {
    float *p = hf(n);
    for (size_t i = 0; i < n; i++) p[i] = scale * nrm();
    return p;
}

/* ---- backend buffers with guard words ---- */

/* n floats (+ GUARD sentinels after them) holding host[0..n), or NaN where host is NULL */
static inline float *dnew(const float *host, size_t n) {
    float *d = O->alloc(O, (n + GUARD) * sizeof(float));
    cr_assert(d != NULL, "alloc of %zu floats failed", n);
    float *tmp = hf(n + GUARD);
    for (size_t i = 0; i < n; i++) tmp[i] = host ? host[i] : NAN;
    for (size_t i = n; i < n + GUARD; i++) tmp[i] = GUARD_VAL;
    O->upload(O, d, tmp, (n + GUARD) * sizeof(float));
    free(tmp);
    return d;
}
static inline int32_t *dnew_i32(const int32_t *host, size_t n) {
    int32_t *d = O->alloc(O, (n ? n : 1) * sizeof(int32_t));
    cr_assert(d != NULL);
    O->upload(O, d, host, n * sizeof(int32_t));
    return d;
}
static inline void dget(float *host, const float *d, size_t n) { O->download(O, host, d, n * sizeof(float)); }
/* checks that nothing was written past d[n) and frees d */
static inline void ddone(float *d, size_t n, const char *what) {
    float g[GUARD];
    O->download(O, g, d + n, sizeof g);
    for (int i = 0; i < GUARD; i++)
        cr_expect(g[i] == GUARD_VAL, "%s: wrote past the end of its %zu-float output (guard %d now %g) (seed %llu)",
                  what, n, i, g[i], SEED);
    O->free(O, d);
}

/* x rounded to bf16 (8 significant bits, ties to even), by frexp/nearbyint:
 * independent of the backend's bit trick. Normal numbers only (the inputs
 * here are N(0,1)-scaled, never subnormal). */
static inline float ref_bf16(float x) {
    if (x == 0.0f || !isfinite(x)) return x;
    int e;
    double m = frexp(x, &e);
    return (float)ldexp(nearbyint(m * 256.0) / 256.0, e);
}

static inline float *bf16_copy(const float *x, size_t n) {
    float *r = hf(n);
    for (size_t i = 0; i < n; i++) r[i] = ref_bf16(x[i]);
    return r;
}

#endif
