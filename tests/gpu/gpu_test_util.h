/* gpu_test_util.h - helpers for the GPU parity tests: the CPU backend is the
 * reference, the CUDA backend is under test. A "dual" buffer holds the same
 * data on both; outputs are poisoned with NaN (or pre-filled with the same
 * random values for "+=" outputs) and carry guard words that must survive.
 * Every test calls gpu_start() first, which skips the test with one line
 * when no CUDA GPU is present. */
#ifndef NAWAL_GPU_TEST_UTIL_H
#define NAWAL_GPU_TEST_UTIL_H

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include "ops.h"
#include "../unit/test_util.h"

static const nawal_ops *CPU, *GPU;
static uint64_t g_seed, g_rng;
#define SEED ((unsigned long long)g_seed)
#define GUARD 8
#define GUARD_VAL (-12345.678f)

/* one line for the whole executable when there is nothing to test on */
ReportHook(PRE_ALL)(struct criterion_test_set *set) {
    (void)set;
    char err[512];
    const nawal_ops *o;
    if (nawal_ops_open(&o, "cuda", err, sizeof err) == NAWAL_OPS_NO_DEVICE)
        fprintf(stderr, "no CUDA GPU present: GPU tests skipped (%s)\n", err);
}

static inline void gpu_start(const char *who) {
    char err[512];
    int rc = nawal_ops_open(&GPU, "cuda", err, sizeof err);
    if (rc == NAWAL_OPS_NO_DEVICE) cr_skip_test("no CUDA GPU present, GPU test skipped (%s)", err);
    cr_assert(rc == 0, "cannot open the CUDA backend: %s", err);
    CPU = nawal_ops_cpu(0);
    cr_assert(GPU->set_precision(GPU, NAWAL_PREC_FP32, err, sizeof err) == 0, "%s", err);
    g_seed = test_seed(who);
    g_rng = g_seed;
}

static inline int rnd(int lo, int hi) { return lo + test_rand_int(&g_rng, hi - lo + 1); }
static inline float nrm(void) { return test_rand_normal(&g_rng); }

static inline float *hf(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    cr_assert(p != NULL, "out of memory");
    return p;
}
static inline float *hrandn(size_t n, float scale) {
    float *p = hf(n);
    for (size_t i = 0; i < n; i++) p[i] = scale * nrm();
    return p;
}

typedef struct { float *c, *g; size_t n; } dual;

static inline float *backend_new(const nawal_ops *o, const float *host, size_t n) {
    float *d = o->alloc(o, (n + GUARD) * sizeof(float));
    cr_assert(d != NULL, "%s alloc of %zu floats failed", o->name, n);
    float *tmp = hf(n + GUARD);
    for (size_t i = 0; i < n; i++) tmp[i] = host ? host[i] : NAN;
    for (size_t i = n; i < n + GUARD; i++) tmp[i] = GUARD_VAL;
    o->upload(o, d, tmp, (n + GUARD) * sizeof(float));
    free(tmp);
    return d;
}

/* host == NULL: poisoned output */
static inline dual dnew(const float *host, size_t n) {
    dual d = { backend_new(CPU, host, n), backend_new(GPU, host, n), n };
    return d;
}
static inline dual drandn(size_t n, float scale) {
    float *h = hrandn(n, scale);
    dual d = dnew(h, n);
    free(h);
    return d;
}
static inline int32_t *inew(const nawal_ops *o, const int32_t *h, size_t n) {
    int32_t *d = o->alloc(o, (n ? n : 1) * sizeof(int32_t));
    cr_assert(d != NULL);
    o->upload(o, d, h, n * sizeof(int32_t));
    return d;
}

/* Compares GPU against CPU: every element finite (no poison left), and
 * max |gpu - cpu| <= tol * max(max |cpu|, floor). Checks guards. */
static inline bool dcheck_keep(const char *what, dual d, double tol, float *out_gpu) {
    float *hc = hf(d.n + GUARD), *hg = hf(d.n + GUARD);
    CPU->download(CPU, hc, d.c, (d.n + GUARD) * sizeof(float));
    GPU->download(GPU, hg, d.g, (d.n + GUARD) * sizeof(float));
    double mref = 1e-30, merr = 0.0;
    size_t worst = 0, bad = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (!isfinite(hg[i]) && isfinite(hc[i])) { bad++; continue; }
        double e = fabs((double)hg[i] - hc[i]);
        if (e > merr) { merr = e; worst = i; }
        if (fabs(hc[i]) > mref) mref = fabs(hc[i]);
    }
    bool ok = true;
    cr_expect(bad == 0, "%s: %zu of %zu GPU outputs not finite (unwritten or NaN) (seed %llu)", what, bad, d.n, SEED);
    ok &= bad == 0;
    cr_expect(merr <= tol * mref, "%s: max |gpu-cpu| %.3g at %zu (gpu %.9g cpu %.9g) > %.1g x max|cpu| %.3g (seed %llu)",
              what, merr, worst, d.n ? hg[worst] : 0.0, d.n ? hc[worst] : 0.0, tol, mref, SEED);
    ok &= merr <= tol * mref;
    for (size_t i = d.n; i < d.n + GUARD; i++) {
        cr_expect(hg[i] == GUARD_VAL, "%s: GPU wrote past the end of its %zu-float output (seed %llu)", what, d.n, SEED);
        ok &= hg[i] == GUARD_VAL;
    }
    if (out_gpu) memcpy(out_gpu, hg, d.n * sizeof(float));
    free(hc);
    free(hg);
    return ok;
}
static inline bool dcheck(const char *what, dual d, double tol) { return dcheck_keep(what, d, tol, NULL); }
static inline void dfree(dual d) { CPU->free(CPU, d.c); GPU->free(GPU, d.g); }

#endif
