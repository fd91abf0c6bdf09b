/* topk.c - the CPU backend's topk_select (ops.h): the indices of the k
 * elements of largest magnitude, in increasing order, in expected O(n)
 * time with no sort of the data. The delta codec (proto/delta_codec.h)
 * calls it to sparsify a model delta; the order and the radix digits are
 * kernels/topk.h's, shared with the CUDA backend, so both select exactly
 * the same elements.
 *
 * Two steps:
 *   1. a threshold from a sample: 16384 keys at fixed pseudo-random
 *      positions, sorted; the key a few standard deviations below the k-th
 *      largest's expected rank is (with overwhelming probability) below the
 *      true k-th largest, with about 1.3 k elements above it at k = 1% of n.
 *      One pass over x (all threads; blocks of 16 tested at once) copies the
 *      (key, index) pairs at or above it into per-thread slices of a
 *      candidate buffer, which are then packed in thread (= index) order.
 *   2. an exact radix select (topk.h: three digit levels, each a histogram
 *      per thread, merged and scanned) over the candidates, then one pass
 *      writing the winners in order: each thread knows from its histograms
 *      how many winners and how many ties it holds, so it writes at its own
 *      offset.
 * When the sample misleads (too few candidates, or a thread's slice
 * overflows: heavy ties at the threshold, adversarial data) or n is small,
 * step 2 runs over x itself: four passes, still O(n). The result does not depend on the path, the sample or the thread
 * count: it is defined by the order alone. */
#include "cpu_ops.h"
#include "topk.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAMPLE 16384
#define SAMPLE_MIN_N ((size_t)1 << 18) /* below this, select over x directly */
#define HIST_STRIDE ((size_t)NAWAL_TOPK_LEVELS * NAWAL_TOPK_MAX_BINS)

/* What a radix select runs over: x itself (key from x[i], index i), or
 * packed candidates (key[i], idx[i]). */
typedef struct {
    const float *x;
    const uint32_t *key, *idx;
    size_t m;
} view;

static inline uint32_t vkey(const view *v, size_t i) { return v->x ? nawal_topk_key(v->x[i]) : v->key[i]; }
static inline uint32_t vidx(const view *v, size_t i) { return v->x ? (uint32_t)i : v->idx[i]; }

static void *xalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "nawal: out of memory in topk_select\n");
        abort();
    }
    return p;
}

/* h[digit] += 1 for the elements of [lo, hi) whose higher digits are prefix */
static void hist_range(const view *v, size_t lo, size_t hi, unsigned long long *h, int level, uint32_t prefix) {
    int sh = nawal_topk_shift(level), psh = sh + nawal_topk_bits(level);
    uint32_t mask = (1u << nawal_topk_bits(level)) - 1;
    for (size_t i = lo; i < hi; i++) {
        uint32_t key = vkey(v, i);
        if ((key >> psh) == prefix) h[(key >> sh) & mask]++;
    }
}

static void output_range(const view *v, size_t lo, size_t hi, uint32_t T, unsigned long long ties, uint32_t *out) {
    for (size_t i = lo; i < hi; i++) {
        uint32_t key = vkey(v, i);
        if (key > T) *out++ = vidx(v, i);
        else if (key == T && ties) {
            *out++ = vidx(v, i);
            ties--;
        }
    }
}

/* The k (1 <= k <= v->m) winners of v, in v's order, into out. */
static void select_view(const view *v, size_t k, uint32_t *out) {
    int maxt = omp_get_max_threads();
    unsigned long long *hist = xalloc((size_t)maxt * HIST_STRIDE, sizeof *hist);
    unsigned long long *ties = xalloc((size_t)maxt, sizeof *ties);
    size_t *start = xalloc((size_t)maxt, sizeof *start);
    uint32_t prefix = 0, digit[NAWAL_TOPK_LEVELS];
    unsigned long long need = k;
    int nt = 1;
    #pragma omp parallel
    {
        int t = omp_get_thread_num();
        #pragma omp single
        nt = omp_get_num_threads();
        size_t lo, hi;
        cpu_thread_range(v->m, &lo, &hi);
        unsigned long long *h = hist + (size_t)t * HIST_STRIDE;
        for (int l = 0; l < NAWAL_TOPK_LEVELS; l++) {
            hist_range(v, lo, hi, h + (size_t)l * NAWAL_TOPK_MAX_BINS, l, prefix);
            #pragma omp barrier
            #pragma omp single
            {
                uint32_t bins = 1u << nawal_topk_bits(l);
                unsigned long long sum[NAWAL_TOPK_MAX_BINS] = { 0 }, above;
                for (int u = 0; u < nt; u++)
                    for (uint32_t b = 0; b < bins; b++) sum[b] += hist[(size_t)u * HIST_STRIDE + (size_t)l * NAWAL_TOPK_MAX_BINS + b];
                digit[l] = nawal_topk_pick(sum, bins, need, &above);
                need -= above;
                prefix = prefix << nawal_topk_bits(l) | digit[l];
            }
        }
        /* prefix is now T, the k-th largest key; need = how many of its ties win.
         * Thread u holds (above T) + (== T) elements, from its histograms. */
        #pragma omp single
        {
            size_t off = 0;
            unsigned long long left = need;
            for (int u = 0; u < nt; u++) {
                const unsigned long long *hu = hist + (size_t)u * HIST_STRIDE;
                unsigned long long gt = 0, eq;
                for (int l = 0; l < NAWAL_TOPK_LEVELS; l++)
                    for (uint32_t b = digit[l] + 1; b < (1u << nawal_topk_bits(l)); b++) gt += hu[(size_t)l * NAWAL_TOPK_MAX_BINS + b];
                eq = hu[(size_t)(NAWAL_TOPK_LEVELS - 1) * NAWAL_TOPK_MAX_BINS + digit[NAWAL_TOPK_LEVELS - 1]];
                ties[u] = eq < left ? eq : left;
                left -= ties[u];
                start[u] = off;
                off += (size_t)(gt + ties[u]);
            }
        }
        output_range(v, lo, hi, prefix, ties[t], out + start[t]);
    }
    free(hist);
    free(ties);
    free(start);
}

static int cmp_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x < y) - (x > y);
}

/* *thr = a key that, with overwhelming probability, at least k elements of
 * x reach (the sample's key 4 standard deviations + 16 ranks below the k-th
 * largest's expected rank); *expect = about how many do. Returns 0 when
 * the sample cannot help (k too large a fraction of n). */
static int sample_threshold(const float *x, size_t n, size_t k, uint32_t *thr, size_t *expect) {
    uint32_t *s = xalloc(SAMPLE, sizeof *s);
    uint64_t z = 0x243F6A8885A308D3ull; /* splitmix64 from a fixed seed: the positions do not depend on x */
    for (size_t i = 0; i < SAMPLE; i++) {
        uint64_t r = (z += 0x9E3779B97F4A7C15ull);
        r = (r ^ (r >> 30)) * 0xBF58476D1CE4E5B9ull;
        r = (r ^ (r >> 27)) * 0x94D049BB133111EBull;
        s[i] = nawal_topk_key(x[(r ^ (r >> 31)) % n]);
    }
    double r = (double)k * SAMPLE / (double)n;
    size_t rank = (size_t)(r + 4.0 * sqrt(r + 1.0) + 16.0);
    int ok = rank < SAMPLE / 4;
    if (ok) {
        qsort(s, SAMPLE, sizeof *s, cmp_desc);
        *thr = s[rank];
        *expect = (size_t)((double)n * (double)(rank + 1) / SAMPLE);
    }
    free(s);
    return ok;
}

size_t cpu_topk_select(const nawal_ops *o, uint32_t *idx_out, const float *x, size_t n, size_t k) {
    (void)o;
    if (k > n) k = n;
    if (k == 0) return 0;
    if (k == n) {
        #pragma omp parallel for
        for (size_t i = 0; i < n; i++) idx_out[i] = (uint32_t)i;
        return n;
    }
    view whole = { x, NULL, NULL, n };
    uint32_t thr;
    size_t expect;
    if (n < SAMPLE_MIN_N || !sample_threshold(x, n, k, &thr, &expect)) {
        select_view(&whole, k, idx_out);
        return k;
    }
    int maxt = omp_get_max_threads();
    size_t cap_total = expect + expect / 2 + (size_t)maxt * 1024;
    uint32_t *ck = xalloc(cap_total, sizeof *ck), *ci = xalloc(cap_total, sizeof *ci);
    size_t *count = xalloc((size_t)maxt, sizeof *count);
    int overflow = 0, nt = 1;
    #pragma omp parallel reduction(| : overflow)
    {
        int t = omp_get_thread_num();
        #pragma omp single
        nt = omp_get_num_threads();
        size_t lo, hi, cap = cap_total / (size_t)nt, c = 0;
        cpu_thread_range(n, &lo, &hi);
        uint32_t *tk = ck + (size_t)t * cap, *ti = ci + (size_t)t * cap;
        /* blocks of 16 are tested with one vectorised OR first: ~1% of the
         * elements pass, so most blocks are skipped without a branch each */
        for (size_t b = lo; b < hi && !overflow; b += 16) {
            size_t e = b + 16 < hi ? b + 16 : hi;
            uint32_t any = 0;
            if (e - b == 16)
                for (int j = 0; j < 16; j++) any |= nawal_topk_key(x[b + j]) >= thr;
            else any = 1;
            for (size_t i = b; any && i < e; i++) {
                uint32_t key = nawal_topk_key(x[i]);
                if (key < thr) continue;
                if (c == cap) { overflow = 1; break; }
                tk[c] = key;
                ti[c++] = (uint32_t)i;
            }
        }
        count[t] = c;
    }
    size_t m = 0;
    for (int t = 0; !overflow && t < nt; t++) { /* pack the slices in thread (= index) order */
        size_t from = (size_t)t * (cap_total / (size_t)nt);
        if (from != m) {
            memmove(ck + m, ck + from, count[t] * sizeof *ck);
            memmove(ci + m, ci + from, count[t] * sizeof *ci);
        }
        m += count[t];
    }
    if (overflow || m < k) select_view(&whole, k, idx_out);
    else {
        view cand = { NULL, ck, ci, m };
        select_view(&cand, k, idx_out);
    }
    free(ck);
    free(ci);
    free(count);
    return k;
}
