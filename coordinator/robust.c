/* robust.c - Byzantine-robust aggregation strategies: coordinate-wise
 * median, coordinate-wise trimmed mean and (multi-)Krum, behind the same
 * nawal_aggregator calls as FedAvg (aggregate.h has the contracts and the
 * definitions; this file the mechanics).
 *
 * A robust rule needs every update's value of an element side by side, so
 * finish reads the model in windows (of one tensor, about 4 MiB of
 * values across the live updates) spread over OpenMP threads: for each
 * window each live update is viewed in place in its file mapping (or read
 * into the thread's buffer), checked for NaN/Inf, and the window's result
 * is computed from the n values of each element. A codec frame cannot be
 * read range by range, so finish first decodes each frame into an unlinked
 * spill file (mapped read-only: it costs disk and page cache, not
 * anonymous memory; the disk blocks are allocated up front), after which
 * it is read like a dense update. An update with a non-finite value is
 * dropped and the pass starts over without it, so the result is what the
 * others alone give; a pass that meets one stops computing but checks on,
 * so that every bad update costs one pass together.
 *
 * Krum takes two passes: pairwise squared distances (each window's partial
 * sums kept apart and added in window order, so the distances, and the
 * selection, do not depend on the thread count), then the mean of the
 * selected updates. */
#include "aggregate.h"
#include "aggregate_internal.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define WINDOW_VALUES ((size_t)1 << 20) /* values of one window across the live updates (4 MiB) */
#define WINDOW_MIN ((size_t)1024)
#define WINDOW_MAX ((size_t)1 << 18)

typedef struct {
    nawal_tensor_source *src; /* a dense update (NULL once closed) */
    size_t *map;              /* base tensor -> src tensor */
    nawal_delta_frame *frame; /* a codec frame, until finish decodes it into flat */
    float *flat;              /* a decoded frame: read-only mapping of an unlinked spill file */
    size_t flat_bytes;
    int rejected;
    char *reason; /* malloc'ed when rejected */
} rmember;

typedef struct {
    size_t t, first, count;
} rwin;

typedef struct {
    nawal_aggregator pub;
    nawal_robust_options o;
    char *spill_dir;
    nawal_tensor_source *base;
    size_t *tensor_off, n_floats;
    float *acc; /* the rule's delta, flat */
    rmember *m;
    size_t n, cap;
    rwin *win;
    size_t n_win;
    int finished; /* 0 open, 1 finishing, 2 finished with an aggregate, 3 without (no usable update), 4 failed */
} robust;

/* ---- parsing ----------------------------------------------------------- */

static int parse_int(const char *s, const char *end, long lo, long hi, long *out) {
    char buf[32];
    size_t len = (size_t)(end - s);
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *e;
    errno = 0;
    long v = strtol(buf, &e, 10);
    if (errno || *e || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int nawal_robust_parse(const char *strategy, nawal_robust_options *o, char *err, size_t errlen) {
    const char *colon = strchr(strategy, ':');
    size_t nlen = colon ? (size_t)(colon - strategy) : strlen(strategy);
    const char *arg = colon ? colon + 1 : NULL;
    memset(o, 0, sizeof *o);
    o->krum_f = -1;
    if (nlen == 6 && !strncmp(strategy, "median", 6)) {
        o->rule = NAWAL_ROBUST_MEDIAN;
        if (arg) return nawal_fail(err, errlen, "median takes no parameter ('%s')", strategy);
        return 1;
    }
    if (nlen == 12 && !strncmp(strategy, "trimmed-mean", 12)) {
        o->rule = NAWAL_ROBUST_TRIMMED_MEAN;
        o->trim = 0.2;
        if (arg) {
            char *e;
            errno = 0;
            double v = strtod(arg, &e);
            int under = errno == ERANGE && fabs(v) < 1.0; /* underflow: a tiny fraction is still a fraction */
            if ((errno && !under) || e == arg || *e || !(v >= 0.0 && v < 0.5))
                return nawal_fail(err, errlen, "trimmed-mean:TRIM wants a fraction in [0, 0.5), got '%s'", arg);
            o->trim = v;
        }
        return 1;
    }
    if (nlen == 4 && !strncmp(strategy, "krum", 4)) {
        o->rule = NAWAL_ROBUST_KRUM;
        if (arg) {
            const char *c2 = strchr(arg, ':');
            long f, m = 0;
            if (parse_int(arg, c2 ? c2 : arg + strlen(arg), 0, 1000000, &f) ||
                (c2 && parse_int(c2 + 1, c2 + 1 + strlen(c2 + 1), 1, 1000000, &m)))
                return nawal_fail(err, errlen,
                                  "krum:F[:M] wants F (updates assumed Byzantine) >= 0 and M (updates averaged) >= 1, got '%s'",
                                  arg);
            o->krum_f = (int)f;
            o->krum_m = (int)m;
        }
        return 1;
    }
    return 0;
}

/* ---- selection ----------------------------------------------------------- */

static void sort_small(float *v, ptrdiff_t lo, ptrdiff_t hi) {
    for (ptrdiff_t i = lo + 1; i <= hi; i++) {
        float x = v[i];
        ptrdiff_t j = i - 1;
        while (j >= lo && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

/* Rearranges v[0..n) (finite values) so that v[k] is the k-th smallest,
 * everything before it <= v[k] <= everything after; returns v[k]. */
static float select_kth(float *v, size_t n, size_t k) {
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, kk = (ptrdiff_t)k;
    while (hi - lo >= 16) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        /* median of three into v[mid] */
        if (v[mid] < v[lo]) { float t = v[mid]; v[mid] = v[lo]; v[lo] = t; }
        if (v[hi] < v[lo]) { float t = v[hi]; v[hi] = v[lo]; v[lo] = t; }
        if (v[hi] < v[mid]) { float t = v[hi]; v[hi] = v[mid]; v[mid] = t; }
        float p = v[mid];
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < p) i++;
            while (v[j] > p) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        /* v[lo..j] <= p, v[i..hi] >= p, v[j+1..i-1] == p */
        if (kk <= j) hi = j;
        else if (kk >= i) lo = i;
        else return v[kk];
    }
    sort_small(v, lo, hi);
    return v[kk];
}

/* The trimmed count at each end for nl updates: ceil(trim x nl), leaving
 * at least one value. */
static size_t trim_count(double trim, size_t nl) {
    size_t b = (size_t)ceil(trim * (double)nl - 1e-9);
    if (2 * b >= nl) b = (nl - 1) / 2;
    return b;
}

/* The rule's value of one element from its nl values in v (reordered). */
static float robust_stat(const robust *R, float *v, size_t nl) {
    if (R->o.rule == NAWAL_ROBUST_MEDIAN) {
        size_t k = (nl - 1) / 2;
        float a = select_kth(v, nl, k);
        if (nl % 2) return a;
        float b = v[k + 1];
        for (size_t q = k + 2; q < nl; q++) b = v[q] < b ? v[q] : b;
        return (float)(((double)a + (double)b) / 2.0);
    }
    size_t b = trim_count(R->o.trim, nl);
    if (b) {
        select_kth(v, nl, b);
        select_kth(v + b, nl - b, nl - 2 * b - 1);
    }
    double s = 0.0;
    for (size_t q = b; q < nl - b; q++) s += v[q];
    return (float)(s / (double)(nl - 2 * b));
}

/* Up to NET_MAX updates, LANES elements at a time: the lanes' values are
 * sorted by an odd-even transposition network (nl rounds of
 * compare-exchanges between neighbouring rows, each a min and a max over
 * the LANES lanes, which vectorise), then the rule reads the sorted rows:
 * no data-dependent branch, and the trimmed mean sums in sorted order. */
#define LANES 16
#define NET_MAX 32

static void stat_lanes(const robust *R, const float *const *x, size_t nl, size_t i0, size_t cnt, float *v,
                       float *out) {
    for (size_t r = 0; r < nl; r++) {
        float *row = v + r * LANES;
        memcpy(row, x[r] + i0, cnt * sizeof(float));
        for (size_t l = cnt; l < LANES; l++) row[l] = 0.0f;
    }
    for (size_t round = 0; round < nl; round++)
        for (size_t r = round & 1; r + 1 < nl; r += 2) {
            float *a = v + r * LANES, *b = a + LANES;
            for (int l = 0; l < LANES; l++) {
                float lo = a[l] < b[l] ? a[l] : b[l], hi = a[l] < b[l] ? b[l] : a[l];
                a[l] = lo;
                b[l] = hi;
            }
        }
    if (R->o.rule == NAWAL_ROBUST_MEDIAN) {
        const float *a = v + ((nl - 1) / 2) * LANES, *b = v + (nl / 2) * LANES;
        for (size_t l = 0; l < cnt; l++) out[l] = nl % 2 ? a[l] : (float)(((double)a[l] + (double)b[l]) / 2.0);
        return;
    }
    size_t t = trim_count(R->o.trim, nl);
    for (size_t l = 0; l < cnt; l++) {
        double s = 0.0;
        for (size_t r = t; r < nl - t; r++) s += v[r * LANES + l];
        out[l] = (float)(s / (double)(nl - 2 * t));
    }
}

/* ---- members ----------------------------------------------------------- */

static void rmember_close(rmember *m) {
    nawal_tensor_source_close(m->src);
    m->src = NULL;
    nawal_delta_frame_close(m->frame);
    m->frame = NULL;
    if (m->flat) munmap(m->flat, m->flat_bytes);
    m->flat = NULL;
    free(m->map);
    m->map = NULL;
}

static void rmember_reject(rmember *m, const char *reason) {
    rmember_close(m);
    m->rejected = 1;
    free(m->reason);
    m->reason = strdup(reason);
}

static void robust_reset(robust *R) {
    for (size_t j = 0; j < R->n; j++) {
        rmember_close(&R->m[j]);
        free(R->m[j].reason);
    }
    free(R->m);
    free(R->tensor_off);
    free(R->acc);
    free(R->win);
    R->m = NULL;
    R->n = R->cap = 0;
    R->tensor_off = NULL;
    R->acc = NULL;
    R->win = NULL;
    R->n_win = 0;
    R->base = NULL;
    R->n_floats = 0;
    R->finished = 0;
}

static int robust_begin(nawal_aggregator *a, nawal_tensor_source *base, char *err, size_t errlen) {
    robust *R = (robust *)a;
    robust_reset(R);
    if (nawal_agg_base_layout(base, &R->tensor_off, &R->n_floats, err, errlen)) return -1;
    if (!(R->acc = nawal_agg_alloc_model(R->n_floats))) {
        robust_reset(R);
        return nawal_fail(err, errlen, "out of memory for a %zu-float aggregate", R->n_floats);
    }
    R->base = base;
    return 0;
}

static int robust_add_any(robust *R, nawal_tensor_source *delta, nawal_delta_frame *frame, uint64_t weight,
                          char *reason, size_t reasonlen) {
    const char *why = !R->base ? "add before begin" : R->finished ? "add after finish" : NULL;
    if (!why && R->n == R->cap) {
        size_t nc = R->cap ? 2 * R->cap : 16;
        rmember *nm = realloc(R->m, nc * sizeof *nm);
        if (nm) {
            R->m = nm;
            R->cap = nc;
        } else why = "out of memory";
    }
    if (why) {
        nawal_tensor_source_close(delta);
        nawal_delta_frame_close(frame);
        return nawal_fail(reason, reasonlen, "%s", why);
    }
    rmember *m = &R->m[R->n++];
    *m = (rmember){.src = delta, .frame = frame};
    int rc = nawal_agg_check_update(R->base, R->n_floats, delta, frame, weight, &m->map, reason, reasonlen);
    if (rc > 0) rmember_reject(m, reason);
    else if (rc < 0) {
        rmember_close(m);
        R->n--; /* an error is not a verdict */
    }
    return rc;
}

/* Weights are not used: a robust rule must not let an update's own claim
 * (its number of examples) decide its influence. */
static int robust_add(nawal_aggregator *a, nawal_tensor_source *delta, uint64_t weight, char *reason,
                      size_t reasonlen) {
    return robust_add_any((robust *)a, delta, NULL, weight, reason, reasonlen);
}

static int robust_add_frame(nawal_aggregator *a, nawal_delta_frame *frame, uint64_t weight, char *reason,
                            size_t reasonlen) {
    return robust_add_any((robust *)a, NULL, frame, weight, reason, reasonlen);
}

/* Decodes m's frame into a mapped, unlinked spill file. 0; NAWAL_AGG_REJECTED
 * (bad payload: m rejected with the codec's reason); -1 (err). */
static int spill_frame(robust *R, rmember *m, char *err, size_t errlen) {
    const char *dir = R->spill_dir ? R->spill_dir : getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/.nawal-spill-XXXXXX", dir) >= sizeof path)
        return nawal_fail(err, errlen, "spill directory path too long");
    int fd = mkstemp(path);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot create a spill file: %s", path, strerror(errno));
    unlink(path);
    size_t bytes = R->n_floats ? R->n_floats * sizeof(float) : 4;
    /* the blocks are allocated before the mapping is written: a full disk is an error here, not a SIGBUS later */
    int e = posix_fallocate(fd, 0, (off_t)bytes);
    if (e) {
        close(fd);
        return nawal_fail(err, errlen, "%s: cannot make a %zu-byte spill file: %s", dir, bytes, strerror(e));
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    e = errno;
    close(fd);
    if (p == MAP_FAILED) return nawal_fail(err, errlen, "%s: cannot map a %zu-byte spill file: %s", dir, bytes, strerror(e));
    char why[NAWAL_AGG_REASON_BYTES];
    if (nawal_delta_decode(p, R->n_floats, m->frame->bytes, m->frame->len, why, sizeof why)) {
        munmap(p, bytes);
        if (!strncmp(why, "out of memory", 13)) return nawal_fail(err, errlen, "%s: %s", m->frame->label, why);
        rmember_reject(m, why);
        return NAWAL_AGG_REJECTED;
    }
    mprotect(p, bytes, PROT_READ);
    nawal_delta_frame_close(m->frame);
    m->frame = NULL;
    m->flat = p;
    m->flat_bytes = bytes;
    return 0;
}

/* ---- passes ----------------------------------------------------------------- */

static int robust_windows(robust *R, size_t nl) {
    size_t window = WINDOW_VALUES / (nl ? nl : 1);
    window = window < WINDOW_MIN ? WINDOW_MIN : window > WINDOW_MAX ? WINDOW_MAX : window;
    size_t need = 0;
    for (size_t t = 0; t < R->base->n_tensors; t++) need += (R->base->tensors[t].numel + window - 1) / window;
    free(R->win);
    R->win = malloc((need ? need : 1) * sizeof *R->win);
    if (!R->win) return -1;
    size_t k = 0;
    for (size_t t = 0; t < R->base->n_tensors; t++) {
        size_t numel = R->base->tensors[t].numel;
        for (size_t first = 0; first < numel; first += window)
            R->win[k++] = (rwin){t, first, numel - first < window ? numel - first : window};
    }
    R->n_win = k;
    return 0;
}

typedef enum { PASS_STAT, PASS_DIST, PASS_MEAN } pass_kind;

/* Krum: the squared distances between the live updates over one window,
 * pair (i < j) at out[i * nl + j]. Blocks of 256 elements are summed in
 * float, 16 lanes (twice the width of double lanes); a block whose float
 * sum overflowed (differences beyond ~1.8e19) is summed again in double,
 * where the square of a float difference cannot overflow. The block sums
 * and the tail are added in double. */
#define DIST_BLOCK 256

static double block_dist_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t e = 0; e < n; e++) {
        double d = (double)a[e] - (double)b[e];
        s += d * d;
    }
    return s;
}

static void window_dist(const float *const *x, size_t nl, size_t count, double *out) {
    for (size_t i = 0; i < nl; i++)
        for (size_t j = i + 1; j < nl; j++) {
            const float *a = x[i], *b = x[j];
            double s = 0.0;
            size_t e = 0;
            for (; e + DIST_BLOCK <= count; e += DIST_BLOCK) {
                float lane[16] = {0};
                for (size_t r = e; r < e + DIST_BLOCK; r += 16)
                    for (int l = 0; l < 16; l++) {
                        float d = a[r + l] - b[r + l];
                        lane[l] += d * d;
                    }
                double bs = 0.0;
                for (int l = 0; l < 16; l++) bs += lane[l];
                s += isfinite(bs) ? bs : block_dist_d(a + e, b + e, DIST_BLOCK);
            }
            out[i * nl + j] = s + block_dist_d(a + e, b + e, count - e);
        }
}

/* One pass over windows [w0, w1) of the live updates live[0..nl):
 * PASS_STAT writes the rule's value of every element into acc, PASS_MEAN
 * the plain mean, PASS_DIST each window's pair distances into
 * dist[(k - w0) * nl * nl]. A non-finite value marks its update in bad[]
 * (reason kept); from then on (or from the start, when bad[] already marks
 * one) the pass only checks the rest, so that one pass finds every bad
 * update. 0 (check bad), -1 read error. */
static int robust_pass(robust *R, pass_kind kind, const size_t *live, size_t nl, size_t w0, size_t w1,
                       unsigned char *bad, double *dist, char *err, size_t errlen) {
    int stop = 0, rc = 0; /* stop: a read error, abandon the pass */
    int tainted = memchr(bad, 1, nl) != NULL; /* a bad value seen: only check the rest, compute nothing */
    size_t maxw = 0;
    for (size_t k = w0; k < w1; k++) maxw = R->win[k].count > maxw ? R->win[k].count : maxw;
    #pragma omp parallel num_threads(R->o.threads)
    {
        float *tb = malloc((nl * maxw + nl * LANES) * sizeof(float));
        const float **x = malloc(nl * sizeof *x);
        unsigned char *viewed = malloc(nl);
        if (!tb || !x || !viewed) {
            #pragma omp critical(nawal_robust_msg)
            {
                if (rc == 0) nawal_fail(err, errlen, "out of memory");
                rc = -1;
            }
            #pragma omp atomic write
            stop = 1;
        }
        float *v = tb ? tb + nl * maxw : NULL;
        #pragma omp for schedule(dynamic, 1)
        for (size_t k = w0; k < w1; k++) {
            int halt;
            #pragma omp atomic read
            halt = stop;
            if (halt) continue;
            const rwin *w = &R->win[k];
            size_t n = w->count, q = 0;
            int fault = 0, bad_here = 0; /* fault: a read error */
            char e[NAWAL_AGG_REASON_BYTES];
            for (; q < nl; q++) {
                rmember *m = &R->m[live[q]];
                viewed[q] = 0;
                if (m->flat) x[q] = m->flat + R->tensor_off[w->t] + w->first;
                else {
                    int v;
                    x[q] = nawal_agg_window(m->src, m->map[w->t], w->first, n, 0, tb + q * maxw, &v, e, sizeof e);
                    viewed[q] = (unsigned char)v;
                    if (!x[q]) {
                        fault = -1;
                        break;
                    }
                }
                size_t p = nawal_agg_first_nonfinite(x[q], n);
                if (p < n) { /* keep checking the others: every bad update is found in one pass */
                    bad_here = 1;
                    char why[NAWAL_AGG_REASON_BYTES];
                    nawal_agg_nonfinite_reason(why, sizeof why, R->base->tensors[w->t].name, w->first, p, x[q][p]);
                    #pragma omp critical(nawal_robust_msg)
                    {
                        if (!bad[q]) {
                            bad[q] = 1;
                            free(m->reason);
                            m->reason = strdup(why);
                        }
                    }
                }
            }
            int skip;
            #pragma omp atomic read
            skip = tainted;
            if (!fault && !bad_here && !skip) {
                float *out = R->acc + R->tensor_off[w->t] + w->first;
                if (kind == PASS_DIST) window_dist(x, nl, n, dist + (k - w0) * nl * nl);
                else if (kind == PASS_MEAN)
                    for (size_t i = 0; i < n; i++) {
                        double s = 0.0;
                        for (size_t r = 0; r < nl; r++) s += x[r][i];
                        out[i] = (float)(s / (double)nl);
                    }
                else if (nl <= NET_MAX)
                    for (size_t i = 0; i < n; i += LANES) stat_lanes(R, x, nl, i, n - i < LANES ? n - i : LANES, v, out + i);
                else
                    for (size_t i = 0; i < n; i++) {
                        for (size_t r = 0; r < nl; r++) v[r] = x[r][i];
                        out[i] = robust_stat(R, v, nl);
                    }
            }
            for (size_t r = 0; r < q; r++) {
                rmember *m = &R->m[live[r]];
                if (viewed[r] && m->src->release) m->src->release(m->src, m->map[w->t], w->first, n);
            }
            if (fault < 0) {
                #pragma omp critical(nawal_robust_msg)
                {
                    if (rc == 0) nawal_fail(err, errlen, "%s", e);
                    rc = -1;
                }
                #pragma omp atomic write
                stop = 1;
            }
            if (bad_here) {
                #pragma omp atomic write
                tainted = 1;
            }
        }
        free(tb);
        free(x);
        free(viewed);
    }
    return rc;
}

/* Krum's pairwise squared distances D[nl][nl] (symmetric, zero diagonal),
 * summed over windows in window order. 0 (check bad), -1. */
static int krum_distances(robust *R, const size_t *live, size_t nl, unsigned char *bad, double *D, char *err,
                          size_t errlen) {
    /* windows whose distances are held at once: at most NAWAL_KRUM_BATCH and 64 MiB, at least one per thread */
    size_t per = nl * nl * sizeof(double), batch = ((size_t)64 << 20) / (per ? per : 1);
    batch = batch > NAWAL_KRUM_BATCH ? NAWAL_KRUM_BATCH : batch;
    batch = batch < (size_t)R->o.threads ? (size_t)R->o.threads : batch;
    batch = batch > R->n_win ? R->n_win : batch;
    batch = batch ? batch : 1;
    double *part = malloc(batch * per);
    if (!part) return nawal_fail(err, errlen, "out of memory for Krum's distances (%zu updates)", nl);
    memset(D, 0, per);
    int rc = 0;
    for (size_t w0 = 0; w0 < R->n_win && rc == 0; w0 += batch) {
        size_t w1 = R->n_win - w0 < batch ? R->n_win : w0 + batch;
        if ((rc = robust_pass(R, PASS_DIST, live, nl, w0, w1, bad, part, err, errlen))) break;
        if (memchr(bad, 1, nl)) continue; /* the rest of the batches only check */
        for (size_t k = 0; k < w1 - w0; k++)
            for (size_t i = 0; i < nl; i++)
                for (size_t j = i + 1; j < nl; j++) D[i * nl + j] += part[k * nl * nl + i * nl + j];
    }
    for (size_t i = 0; i < nl; i++)
        for (size_t j = 0; j < i; j++) D[i * nl + j] = D[j * nl + i];
    free(part);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

size_t nawal_krum_kept(const nawal_robust_options *o, size_t n, long *f_out) {
    long f = o->krum_f < 0 ? (n >= 3 ? ((long)n - 3) / 2 : 0) : o->krum_f;
    size_t m = o->krum_m > 0 ? (size_t)o->krum_m : (f < (long)n ? n - (size_t)f : 1);
    if (f_out) *f_out = f;
    return m > n ? n : m;
}

/* Krum's choice among the live updates: the m with the lowest scores
 * (score = the sum of the squared distances to its nl - f - 2 nearest
 * others; ties by position). Marks the others rejected; *sel gets the
 * chosen positions in update order. */
static int krum_select(robust *R, const size_t *live, size_t nl, const double *D, size_t *sel, size_t *n_sel) {
    long f;
    size_t m = nawal_krum_kept(&R->o, nl, &f);
    long fe = f; /* the f the scores can use: at least one neighbour each */
    if ((long)nl - fe - 2 < 1) fe = nl >= 3 ? (long)nl - 3 : 0;
    size_t neigh = nl >= 3 ? nl - (size_t)fe - 2 : 0;
    double *score = malloc(nl * sizeof *score), *row = malloc(nl * sizeof *row);
    size_t *order = malloc(nl * sizeof *order);
    if (!score || !row || !order) {
        free(score);
        free(row);
        free(order);
        return -1;
    }
    for (size_t i = 0; i < nl; i++) {
        size_t r = 0;
        for (size_t j = 0; j < nl; j++)
            if (j != i) row[r++] = D[i * nl + j];
        qsort(row, r, sizeof *row, cmp_double);
        double s = 0.0;
        for (size_t j = 0; j < neigh && j < r; j++) s += row[j];
        score[i] = s;
        order[i] = i;
    }
    /* rank by score, ties by position (insertion sort: nl is small) */
    for (size_t i = 1; i < nl; i++) {
        size_t x = order[i], j = i;
        while (j > 0 && (score[order[j - 1]] > score[x] || (score[order[j - 1]] == score[x] && order[j - 1] > x))) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = x;
    }
    unsigned char *chosen = calloc(nl, 1);
    if (!chosen) {
        free(score);
        free(row);
        free(order);
        return -1;
    }
    for (size_t r = 0; r < m; r++) chosen[order[r]] = 1;
    *n_sel = 0;
    for (size_t r = 0; r < nl; r++) {
        size_t i = order[r];
        if (chosen[i]) continue;
        char why[NAWAL_AGG_REASON_BYTES];
        snprintf(why, sizeof why,
                 "krum: not among the %zu of %zu updates closest to the others (score %.6g, rank %zu; f = %ld)", m, nl,
                 score[i], r + 1, f);
        rmember_reject(&R->m[live[i]], why);
    }
    for (size_t i = 0; i < nl; i++)
        if (chosen[i]) sel[(*n_sel)++] = live[i];
    free(chosen);
    free(score);
    free(row);
    free(order);
    return 0;
}

/* Decodes the frames, then passes until one finds no bad value (each
 * without the updates the previous one caught). 0, NAWAL_AGG_REJECTED
 * (none left), -1. */
static int robust_combine(robust *R, char *err, size_t errlen) {
    for (size_t j = 0; j < R->n; j++) {
        rmember *m = &R->m[j];
        if (!m->rejected && m->frame && spill_frame(R, m, err, errlen) < 0) return -1;
    }
    size_t *live = malloc((R->n ? R->n : 1) * sizeof *live), *sel = malloc((R->n ? R->n : 1) * sizeof *sel);
    unsigned char *bad = calloc(R->n ? R->n : 1, 1);
    double *D = R->o.rule == NAWAL_ROBUST_KRUM ? malloc((R->n ? R->n * R->n : 1) * sizeof *D) : NULL;
    int rc = !live || !sel || !bad || (R->o.rule == NAWAL_ROBUST_KRUM && !D) ? nawal_fail(err, errlen, "out of memory") : 0;
    while (rc == 0) {
        size_t nl = 0;
        for (size_t j = 0; j < R->n; j++)
            if (!R->m[j].rejected) live[nl++] = j;
        if (nl == 0) {
            nawal_fail(err, errlen, "no accepted update to aggregate");
            rc = NAWAL_AGG_REJECTED;
            break;
        }
        memset(bad, 0, nl);
        if (robust_windows(R, nl)) {
            rc = nawal_fail(err, errlen, "out of memory");
            break;
        }
        if (R->o.rule != NAWAL_ROBUST_KRUM) rc = robust_pass(R, PASS_STAT, live, nl, 0, R->n_win, bad, NULL, err, errlen);
        else rc = krum_distances(R, live, nl, bad, D, err, errlen);
        if (rc) break;
        int again = 0;
        for (size_t q = 0; q < nl; q++)
            if (bad[q]) {
                rmember *m = &R->m[live[q]];
                rmember_close(m);
                m->rejected = 1;
                again = 1;
            }
        if (again) continue;
        if (R->o.rule == NAWAL_ROBUST_KRUM) {
            size_t ns = 0;
            if (krum_select(R, live, nl, D, sel, &ns)) {
                rc = nawal_fail(err, errlen, "out of memory");
                break;
            }
            /* the selected updates were all read whole and found finite */
            rc = robust_pass(R, PASS_MEAN, sel, ns, 0, R->n_win, bad, NULL, err, errlen);
        }
        break;
    }
    free(live);
    free(sel);
    free(bad);
    free(D);
    return rc;
}

static int robust_finish(nawal_aggregator *a, char *err, size_t errlen) {
    robust *R = (robust *)a;
    if (!R->base) return nawal_fail(err, errlen, "finish before begin");
    if (R->finished) return nawal_fail(err, errlen, "finish called twice");
    R->finished = 1;
    int rc = robust_combine(R, err, errlen);
    for (size_t j = 0; j < R->n; j++) rmember_close(&R->m[j]); /* the updates are done with */
    R->finished = rc == 0 ? 2 : rc > 0 ? 3 : 4;
    return rc;
}

static int robust_write(nawal_aggregator *a, nawal_byte_sink sink, void *ctx, char *err, size_t errlen) {
    robust *R = (robust *)a;
    if (R->finished != 2) return nawal_fail(err, errlen, "no aggregate to write (finish first)");
    return nawal_agg_write_model(R->base, R->acc, R->tensor_off, sink, ctx, err, errlen);
}

static int robust_verdict(nawal_aggregator *a, size_t i, char *reason, size_t reasonlen) {
    robust *R = (robust *)a;
    if (R->finished != 2 && R->finished != 3) return nawal_fail(reason, reasonlen, "no verdict: finish did not complete");
    if (i >= R->n) return nawal_fail(reason, reasonlen, "no update %zu", i);
    const rmember *m = &R->m[i];
    if (!m->rejected) {
        if (reason && reasonlen) reason[0] = 0;
        return 0;
    }
    nawal_fail(reason, reasonlen, "%s", m->reason ? m->reason : "rejected");
    return NAWAL_AGG_REJECTED;
}

static void robust_destroy(nawal_aggregator *a) {
    robust *R = (robust *)a;
    robust_reset(R);
    free(R->spill_dir);
    free(R);
}

int nawal_robust_create(nawal_aggregator **out, const nawal_robust_options *o, char *err, size_t errlen) {
    *out = NULL;
    if (o->rule == NAWAL_ROBUST_TRIMMED_MEAN && !(o->trim >= 0.0 && o->trim < 0.5))
        return nawal_fail(err, errlen, "trimmed mean: the fraction trimmed at each end must be in [0, 0.5)");
    if (o->rule != NAWAL_ROBUST_MEDIAN && o->rule != NAWAL_ROBUST_TRIMMED_MEAN && o->rule != NAWAL_ROBUST_KRUM)
        return nawal_fail(err, errlen, "unknown robust rule %d", (int)o->rule);
    robust *R = calloc(1, sizeof *R);
    if (!R) return nawal_fail(err, errlen, "out of memory");
    R->o = *o;
    R->o.spill_dir = NULL;
    if (o->spill_dir && !(R->spill_dir = strdup(o->spill_dir))) {
        free(R);
        return nawal_fail(err, errlen, "out of memory");
    }
    if (R->o.threads <= 0) R->o.threads = omp_get_max_threads();
    if (R->o.threads < 1) R->o.threads = 1;
    R->pub.name = o->rule == NAWAL_ROBUST_MEDIAN ? "median" : o->rule == NAWAL_ROBUST_TRIMMED_MEAN ? "trimmed-mean" : "krum";
    R->pub.begin = robust_begin;
    R->pub.add = robust_add;
    R->pub.add_frame = robust_add_frame;
    R->pub.finish = robust_finish;
    R->pub.write = robust_write;
    R->pub.verdict = robust_verdict;
    R->pub.destroy = robust_destroy;
    *out = &R->pub;
    return 0;
}
