/* aggregate.c - tensor sources, codec frames, weighted FedAvg and the
 * round-level aggregation driver (see aggregate.h for the contracts and
 * the numerics).
 *
 * FedAvg's pass is split into windows of one tensor, spread over OpenMP
 * threads (each with its own chunk buffer for sources it cannot view), so
 * which thread handles a window never changes its arithmetic. */
#include "aggregate.h"
#include "aggregate_internal.h"
#include "cid.h"
#include "error.h"
#include "flat_model.h"

#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the dense source reads safetensors' little-endian floats in place"
#endif

#define FINISH_CHUNK ((size_t)1 << 18) /* floats per write of the new model (1 MiB) */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "[768, 2304]" */
static const char *shape_str(char *buf, size_t cap, const nawal_tensor_info *t) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Index of the first element of x[0..n) that is NaN or +-Inf, n if none.
 * The fast path is an integer max over the magnitude bits (vectorises). */
size_t nawal_agg_first_nonfinite(const float *x, size_t n) {
    uint32_t mx = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u &= 0x7fffffffu;
        mx = u > mx ? u : mx;
    }
    if (mx < 0x7f800000u) return n;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return i;
    }
    return n;
}

const float *nawal_agg_window(nawal_tensor_source *src, size_t t, size_t first, size_t count, int no_view, float *buf,
                              int *viewed, char *e, size_t elen) {
    const float *x = no_view || !src->view ? NULL : src->view(src, t, first, count);
    *viewed = x != NULL;
    if (x) return x;
    return src->read(src, t, first, count, buf, e, elen) ? NULL : buf;
}

void nawal_agg_nonfinite_reason(char *out, size_t cap, const char *name, size_t first, size_t p, float v) {
    snprintf(out, cap, "tensor '%.80s' element %zu is %g (not finite)", name, first + p, (double)v);
}

static void *alloc_aligned(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
}

/* ---- dense safetensors source --------------------------------------------- */

typedef struct {
    nawal_tensor_source pub;
    int fd;
    nawal_st_file *idx;
    nawal_tensor_info *infos;
    uint64_t *offs;
    const char **meta;
    char *label;
    const uint8_t *map;  /* the whole file, read-only (NULL: pread only) */
    size_t map_len;
} st_source;

static int st_src_range_ok(const st_source *s, size_t i, size_t first, size_t count) {
    return i < s->pub.n_tensors && first <= s->infos[i].numel && count <= s->infos[i].numel - first &&
           s->infos[i].dtype == NAWAL_ST_F32;
}

static const float *st_src_view(nawal_tensor_source *src, size_t i, size_t first, size_t count) {
    st_source *s = (st_source *)src;
    if (!s->map || !st_src_range_ok(s, i, first, count) || s->offs[i] % sizeof(float)) return NULL;
    return (const float *)(s->map + s->offs[i] + first * sizeof(float));
}

static size_t page_size(void) {
    static size_t ps;
    if (!ps) ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

static void st_src_release(nawal_tensor_source *src, size_t i, size_t first, size_t count) {
    st_source *s = (st_source *)src;
    if (!s->map || !st_src_range_ok(s, i, first, count) || !count) return;
    /* The kernel maps file pages in pieces: whole large folios (up to 2 MiB, naturally aligned in
     * the file), their neighbours within the fault-around distance (64 KiB by default), or a 2 MiB
     * page-table entry. So reading this range may have mapped pages a little outside it, up to the
     * 2 MiB boundaries around it: drop all of that. Pages a neighbouring window still uses are
     * simply mapped again from the page cache when it touches them. */
    const size_t piece = (size_t)2 << 20, margin = (size_t)64 << 10;
    size_t ps = page_size(), lo = (size_t)(s->offs[i] + first * sizeof(float)), hi = lo + count * sizeof(float);
    lo = lo > margin ? lo - margin : 0;
    hi += margin;
    lo -= lo % piece;
    hi = hi % piece ? hi + piece - hi % piece : hi;
    size_t end = (s->map_len + ps - 1) / ps * ps;
    if (hi > end) hi = end;
    madvise((void *)(s->map + lo), hi - lo, MADV_DONTNEED);
}

static int st_src_read(nawal_tensor_source *src, size_t i, size_t first, size_t count, float *dst, char *err,
                       size_t errlen) {
    st_source *s = (st_source *)src;
    if (i >= src->n_tensors || first > s->infos[i].numel || count > s->infos[i].numel - first)
        return nawal_fail(err, errlen, "%s: read outside tensor %zu", s->label, i);
    if (s->infos[i].dtype != NAWAL_ST_F32)
        return nawal_fail(err, errlen, "%s: tensor '%s' is not F32", s->label, s->infos[i].name);
    uint8_t *p = (uint8_t *)dst;
    size_t left = count * sizeof(float);
    off_t off = (off_t)(s->offs[i] + first * sizeof(float));
    while (left) {
        ssize_t r = pread(s->fd, p, left, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return nawal_fail(err, errlen, "%s: read failed: %s", s->label, r < 0 ? strerror(errno) : "file shrank");
        p += r;
        left -= (size_t)r;
        off += r;
    }
    return 0;
}

static void st_src_close(nawal_tensor_source *src) {
    st_source *s = (st_source *)src;
    if (s->map) munmap((void *)s->map, s->map_len);
    if (s->fd >= 0) close(s->fd);
    nawal_st_free(s->idx);
    free(s->infos);
    free(s->offs);
    free(s->meta);
    free(s->label);
    free(s);
}

int nawal_tensor_source_open_fd(nawal_tensor_source **out, int fd, const char *label, char *err, size_t errlen) {
    *out = NULL;
    st_source *s = calloc(1, sizeof *s);
    if (!s || !(s->label = strdup(label ? label : "<fd>"))) {
        free(s);
        close(fd);
        return nawal_fail(err, errlen, "out of memory");
    }
    s->fd = fd;
    s->pub.label = s->label;
    s->pub.read = st_src_read;
    s->pub.close = st_src_close;
    if (nawal_st_read_index(&s->idx, fd, s->label, err, errlen)) {
        st_src_close(&s->pub);
        return NAWAL_AGG_REJECTED;
    }
    size_t n = nawal_st_count(s->idx), nm = nawal_st_metadata_count(s->idx);
    s->infos = calloc(n ? n : 1, sizeof *s->infos);
    s->offs = calloc(n ? n : 1, sizeof *s->offs);
    s->meta = calloc(2 * nm + 1, sizeof *s->meta);
    size_t *order = malloc((n ? n : 1) * sizeof *order); /* tensors listed in flat order */
    if (!s->infos || !s->offs || !s->meta || !order || nawal_flat_order(s->idx, order, NULL, err, errlen)) {
        free(order);
        st_src_close(&s->pub);
        return nawal_fail(err, errlen, "out of memory");
    }
    for (size_t j = 0; j < n; j++) {
        size_t i = order[j];
        const nawal_st_tensor *t = nawal_st_at(s->idx, i);
        nawal_tensor_info *x = &s->infos[j];
        x->name = t->name;
        x->dtype = t->dtype;
        x->ndim = t->ndim;
        memcpy(x->shape, t->shape, sizeof x->shape);
        x->numel = t->nbytes / nawal_st_dtype_size(t->dtype);
        s->offs[j] = nawal_st_data_offset(s->idx, i);
    }
    free(order);
    for (size_t i = 0; i < nm; i++) nawal_st_metadata_at(s->idx, i, &s->meta[2 * i], &s->meta[2 * i + 1]);
    s->pub.n_tensors = n;
    s->pub.tensors = s->infos;
    s->pub.meta_kv = s->meta;
    struct stat sb;
    if (fstat(fd, &sb) == 0 && sb.st_size > 0 && (uint64_t)sb.st_size <= SIZE_MAX) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            s->map = m;
            s->map_len = (size_t)sb.st_size;
            s->pub.view = st_src_view;
            s->pub.release = st_src_release;
        }
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    *out = &s->pub;
    return 0;
}

int nawal_tensor_source_open_file(nawal_tensor_source **out, const char *path, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return nawal_tensor_source_open_fd(out, fd, path, err, errlen);
}

#define BLOB_LABEL_BYTES (NAWAL_CID_HEX_BYTES + 8)

/* A descriptor on blob cid and its label "blob <hex>"; -1 if missing. */
static int blob_open(nawal_store *s, const uint8_t cid[32], char label[BLOB_LABEL_BYTES], char *err, size_t errlen) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    snprintf(label, BLOB_LABEL_BYTES, "blob %s", hex);
    return nawal_blobstore_open(s, cid, 0, NULL, err, errlen);
}

int nawal_tensor_source_open_blob(nawal_tensor_source **out, nawal_store *s, const uint8_t cid[32], char *err,
                                  size_t errlen) {
    *out = NULL;
    char label[BLOB_LABEL_BYTES];
    int fd = blob_open(s, cid, label, err, errlen);
    if (fd < 0) return -1;
    return nawal_tensor_source_open_fd(out, fd, label, err, errlen);
}

/* ---- codec frames ------------------------------------------------------------- */

void nawal_delta_frame_close(nawal_delta_frame *fr) {
    if (!fr) return;
    if (fr->bytes) munmap((void *)fr->bytes, fr->len);
    free((char *)fr->label);
    free(fr);
}

/* The frame's pages leave the resident set (read again from the page cache if needed). */
static void frame_release(nawal_delta_frame *fr) { madvise((void *)fr->bytes, fr->len, MADV_DONTNEED); }

static int frame_open_fd(nawal_delta_frame **out, int fd, size_t len, const char *label, char *err, size_t errlen) {
    nawal_delta_frame *fr = calloc(1, sizeof *fr);
    int rc = fr && (fr->label = strdup(label)) ? 0 : nawal_fail(err, errlen, "out of memory");
    void *m = rc == 0 ? mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (rc == 0 && m == MAP_FAILED) rc = nawal_fail(err, errlen, "%s: cannot map: %s", label, strerror(errno));
    close(fd); /* the mapping keeps the file */
    if (rc == 0) {
        fr->bytes = m;
        fr->len = len;
        char why[NAWAL_AGG_REASON_BYTES];
        if (nawal_delta_info_read(&fr->info, fr->bytes, fr->len, why, sizeof why)) {
            nawal_fail(err, errlen, "%s", why);
            rc = NAWAL_AGG_REJECTED;
        }
    }
    if (rc) nawal_delta_frame_close(fr);
    else *out = fr;
    return rc;
}

int nawal_update_open_fd(nawal_tensor_source **src, nawal_delta_frame **frame, int fd, const char *label, char *err,
                         size_t errlen) {
    *src = NULL;
    *frame = NULL;
    if (!label) label = "<fd>";
    uint8_t head[4];
    ssize_t r;
    do r = pread(fd, head, sizeof head, 0); while (r < 0 && errno == EINTR);
    struct stat sb;
    if (r < 0 || fstat(fd, &sb)) {
        nawal_fail(err, errlen, "%s: cannot read: %s", label, strerror(errno));
        close(fd);
        return -1;
    }
    if (!nawal_delta_is_frame(head, (size_t)r)) return nawal_tensor_source_open_fd(src, fd, label, err, errlen);
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return nawal_fail(err, errlen, "%s: too large to map", label);
    }
    return frame_open_fd(frame, fd, (size_t)sb.st_size, label, err, errlen);
}

int nawal_update_open_file(nawal_tensor_source **src, nawal_delta_frame **frame, const char *path, char *err,
                           size_t errlen) {
    *src = NULL;
    *frame = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return nawal_update_open_fd(src, frame, fd, path, err, errlen);
}

int nawal_update_open_blob(nawal_tensor_source **src, nawal_delta_frame **frame, nawal_store *s,
                           const uint8_t cid[32], char *err, size_t errlen) {
    *src = NULL;
    *frame = NULL;
    char label[BLOB_LABEL_BYTES];
    int fd = blob_open(s, cid, label, err, errlen);
    if (fd < 0) return -1;
    return nawal_update_open_fd(src, frame, fd, label, err, errlen);
}

void nawal_tensor_source_close(nawal_tensor_source *src) {
    if (src) src->close(src);
}

/* ---- layout check ------------------------------------------------------------ */

typedef struct {
    const char *name;
    size_t idx;
} name_idx;

static int cmp_name_idx(const void *a, const void *b) {
    return strcmp(((const name_idx *)a)->name, ((const name_idx *)b)->name);
}

int nawal_tensor_layout_match(const nawal_tensor_source *base, const nawal_tensor_source *delta, size_t *map_out,
                              char *reason, size_t reasonlen) {
    size_t n = base->n_tensors;
    name_idx *sorted = malloc((n ? n : 1) * sizeof *sorted);
    unsigned char *seen = calloc(n ? n : 1, 1);
    if (!sorted || !seen) {
        free(sorted);
        free(seen);
        return nawal_fail(reason, reasonlen, "out of memory");
    }
    for (size_t k = 0; k < n; k++) sorted[k] = (name_idx){base->tensors[k].name, k};
    qsort(sorted, n, sizeof *sorted, cmp_name_idx);
    int rc = 0;
    char s1[96], s2[96];
    for (size_t j = 0; j < delta->n_tensors && rc == 0; j++) {
        const nawal_tensor_info *d = &delta->tensors[j];
        name_idx key = {d->name, 0};
        const name_idx *hit = n ? bsearch(&key, sorted, n, sizeof *sorted, cmp_name_idx) : NULL;
        if (!hit) {
            nawal_fail(reason, reasonlen, "unexpected tensor '%.80s' (not in the base model)", d->name);
            rc = NAWAL_AGG_REJECTED;
            break;
        }
        const nawal_tensor_info *b = &base->tensors[hit->idx];
        int same = d->dtype == NAWAL_ST_F32 && d->ndim == b->ndim && d->numel == b->numel;
        for (int k = 0; same && k < b->ndim; k++) same = d->shape[k] == b->shape[k];
        if (!same) {
            nawal_fail(reason, reasonlen, "tensor '%.80s' is %s %s, the base model's is F32 %s", d->name,
                       nawal_st_dtype_name(d->dtype) ? nawal_st_dtype_name(d->dtype) : "?",
                       shape_str(s1, sizeof s1, d), shape_str(s2, sizeof s2, b));
            rc = NAWAL_AGG_REJECTED;
        } else if (seen[hit->idx]) {
            nawal_fail(reason, reasonlen, "tensor '%.80s' appears twice", d->name);
            rc = NAWAL_AGG_REJECTED;
        } else {
            seen[hit->idx] = 1;
            if (map_out) map_out[hit->idx] = j;
        }
    }
    for (size_t k = 0; k < n && rc == 0; k++)
        if (!seen[k]) {
            nawal_fail(reason, reasonlen, "missing tensor '%.80s'", base->tensors[k].name);
            rc = NAWAL_AGG_REJECTED;
        }
    free(sorted);
    free(seen);
    return rc;
}

/* ---- FedAvg ------------------------------------------------------------------ */

typedef struct {
    size_t t, first, count; /* base tensor, element range */
} work_item;

typedef struct {
    nawal_tensor_source *src; /* NULL once rejected (closed) or after finish */
    nawal_delta_frame *frame; /* instead of src for a codec frame */
    size_t *map;              /* base tensor -> src tensor */
    uint64_t weight;
    int rejected;
    char *reason;             /* malloc'ed when rejected */
} member;

typedef struct {
    nawal_aggregator pub;
    int threads, no_view;
    size_t chunk;
    nawal_tensor_source *base;
    size_t *tensor_off; /* base tensor -> first float in acc */
    size_t n_floats;
    float *acc;         /* the weighted mean of the live updates' deltas */
    int per_entry;      /* fedavg-sparse: each entry's mean over the updates that send it */
    float *wsum;        /* per_entry: the frames' weight on each entry */
    work_item *items;   /* windows of the current pass */
    size_t n_items, cap_items;
    float *tbuf;        /* threads x chunk, for sources that cannot be viewed */
    member *members;    /* every add, in call order */
    size_t n_members, cap_members;
    int finished;       /* 0 open, 1 finishing, 2 finished with an aggregate, 3 finished without */
} fedavg;

static void member_close(member *m) {
    nawal_tensor_source_close(m->src);
    m->src = NULL;
    nawal_delta_frame_close(m->frame);
    m->frame = NULL;
    free(m->map);
    m->map = NULL;
}

static void fedavg_reset(fedavg *f) {
    for (size_t j = 0; j < f->n_members; j++) {
        member_close(&f->members[j]);
        free(f->members[j].reason);
    }
    free(f->members);
    free(f->tensor_off);
    free(f->acc);
    free(f->wsum);
    f->wsum = NULL;
    free(f->items);
    free(f->tbuf);
    f->members = NULL;
    f->n_members = f->cap_members = 0;
    f->tensor_off = NULL;
    f->acc = f->tbuf = NULL;
    f->items = NULL;
    f->base = NULL;
    f->n_items = f->cap_items = f->n_floats = 0;
    f->finished = 0;
}

int nawal_agg_base_layout(const nawal_tensor_source *base, size_t **tensor_off, size_t *total, char *err,
                          size_t errlen) {
    size_t n = base->n_tensors, sum = 0;
    *tensor_off = NULL;
    *total = 0;
    for (size_t t = 0; t < n; t++) {
        const nawal_tensor_info *x = &base->tensors[t];
        if (x->dtype != NAWAL_ST_F32)
            return nawal_fail(err, errlen, "%s: base tensor '%s' is not F32", base->label, x->name);
        if (x->numel > SIZE_MAX / sizeof(float) - sum) return nawal_fail(err, errlen, "%s: model too large", base->label);
        sum += x->numel;
    }
    size_t *off = malloc((n ? n : 1) * sizeof *off);
    if (!off) return nawal_fail(err, errlen, "out of memory");
    sum = 0;
    for (size_t t = 0; t < n; t++) {
        off[t] = sum;
        sum += base->tensors[t].numel;
    }
    *tensor_off = off;
    *total = sum;
    return 0;
}

float *nawal_agg_alloc_model(size_t n_floats) {
    /* 2 MiB-aligned and, where the kernel allows, in huge pages: hundreds of MiB touched once per
     * aggregation would otherwise cost a page fault every 4 KiB */
    size_t bytes = n_floats * sizeof(float);
    void *p = NULL;
    if (posix_memalign(&p, (size_t)2 << 20, bytes ? bytes : 64) != 0) return NULL;
    if (bytes >= ((size_t)2 << 20)) madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

static int fedavg_begin(nawal_aggregator *a, nawal_tensor_source *base, char *err, size_t errlen) {
    fedavg *f = (fedavg *)a;
    fedavg_reset(f);
    size_t total;
    if (nawal_agg_base_layout(base, &f->tensor_off, &total, err, errlen)) return -1;
    f->acc = nawal_agg_alloc_model(total);
    f->tbuf = alloc_aligned((size_t)f->threads * f->chunk * sizeof(float));
    if (f->per_entry) f->wsum = alloc_aligned(total ? total * sizeof(float) : 64);
    if (!f->acc || !f->tbuf || (f->per_entry && !f->wsum)) {
        fedavg_reset(f);
        return nawal_fail(err, errlen, "out of memory for a %zu-float accumulator", total);
    }
    f->n_floats = total;
    f->base = base;
    return 0;
}

/* A new member for update delta or frame (whichever is not NULL), or NULL
 * (both closed) when it cannot be added. */
static member *fedavg_member_new(fedavg *f, nawal_tensor_source *delta, nawal_delta_frame *frame, uint64_t weight,
                                 char *reason, size_t reasonlen) {
    const char *why = !f->base ? "add before begin" : f->finished ? "add after finish" : NULL;
    if (!why && f->n_members == f->cap_members) {
        size_t nc = f->cap_members ? 2 * f->cap_members : 16;
        member *nm = realloc(f->members, nc * sizeof *nm);
        if (nm) {
            f->members = nm;
            f->cap_members = nc;
        } else why = "out of memory";
    }
    if (why) {
        nawal_tensor_source_close(delta);
        nawal_delta_frame_close(frame);
        nawal_fail(reason, reasonlen, "%s", why);
        return NULL;
    }
    member *m = &f->members[f->n_members++];
    *m = (member){delta, frame, NULL, weight, 0, NULL};
    return m;
}

/* The end of an add: on rc != 0 the member is closed and either rejected
 * with reason (NAWAL_AGG_REJECTED) or forgotten (-1: an error is not a verdict). */
static int fedavg_member_done(fedavg *f, member *m, int rc, const char *reason) {
    if (rc) {
        member_close(m);
        m->rejected = 1;
        if (rc > 0) m->reason = strdup(reason);
        else f->n_members--;
    }
    return rc;
}

int nawal_agg_check_update(nawal_tensor_source *base, size_t n_floats, const nawal_tensor_source *delta,
                           const nawal_delta_frame *frame, uint64_t weight, size_t **map, char *reason,
                           size_t reasonlen) {
    *map = NULL;
    if (weight == 0) {
        nawal_fail(reason, reasonlen, "it was trained on no examples (weight 0)");
        return NAWAL_AGG_REJECTED;
    }
    if (frame) {
        if (frame->info.n == (uint64_t)n_floats) return 0;
        nawal_fail(reason, reasonlen, "delta frame is for a model of %llu values, the base model has %zu",
                   (unsigned long long)frame->info.n, n_floats);
        return NAWAL_AGG_REJECTED;
    }
    if (!(*map = malloc((base->n_tensors ? base->n_tensors : 1) * sizeof **map)))
        return nawal_fail(reason, reasonlen, "out of memory");
    int rc = nawal_tensor_layout_match(base, delta, *map, reason, reasonlen);
    if (rc) {
        free(*map);
        *map = NULL;
    }
    return rc;
}

static int fedavg_add(nawal_aggregator *a, nawal_tensor_source *delta, uint64_t weight, char *reason,
                      size_t reasonlen) {
    fedavg *f = (fedavg *)a;
    member *m = fedavg_member_new(f, delta, NULL, weight, reason, reasonlen);
    if (!m) return -1;
    int rc = nawal_agg_check_update(f->base, f->n_floats, delta, NULL, weight, &m->map, reason, reasonlen);
    return fedavg_member_done(f, m, rc, reason);
}

/* Header-level checks only: the payload is checked as it is added, in finish. */
static int fedavg_add_frame(nawal_aggregator *a, nawal_delta_frame *frame, uint64_t weight, char *reason,
                            size_t reasonlen) {
    fedavg *f = (fedavg *)a;
    member *m = fedavg_member_new(f, NULL, frame, weight, reason, reasonlen);
    if (!m) return -1;
    int rc = nawal_agg_check_update(f->base, f->n_floats, NULL, frame, weight, &m->map, reason, reasonlen);
    return fedavg_member_done(f, m, rc, reason);
}

/* Splits the model into windows of at most `window` floats (whole tensors
 * when smaller). */
static int fedavg_windows(fedavg *f, size_t window) {
    size_t need = 0;
    for (size_t t = 0; t < f->base->n_tensors; t++) need += (f->base->tensors[t].numel + window - 1) / window;
    if (need > f->cap_items) {
        work_item *ni = realloc(f->items, need * sizeof *ni);
        if (!ni) return -1;
        f->items = ni;
        f->cap_items = need;
    }
    size_t k = 0;
    for (size_t t = 0; t < f->base->n_tensors; t++) {
        size_t numel = f->base->tensors[t].numel;
        for (size_t first = 0; first < numel; first += window)
            f->items[k++] = (work_item){t, first, numel - first < window ? numel - first : window};
    }
    f->n_items = k;
    return 0;
}

/* acc[0..n) (+)= c x[0..n) (= when first), and the largest magnitude bit
 * pattern of x in the same read: >= 0x7f800000 means a NaN or Inf. */
static uint32_t combine_check(float *restrict acc, const float *restrict x, size_t n, float c, int first) {
    uint32_t mx = 0;
    if (first)
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            u &= 0x7fffffffu;
            mx = u > mx ? u : mx;
            acc[i] = c * x[i];
        }
    else
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            u &= 0x7fffffffu;
            mx = u > mx ? u : mx;
            acc[i] += c * x[i];
        }
    return mx;
}

/* One pass over every live update: acc = sum_j c_j delta_j with the
 * products and sums in update order (the same arithmetic for every
 * element, whichever thread runs it). Windows go to threads; for each
 * window, each update in turn is viewed (or read), checked and added into
 * the accumulator's window (which stays in cache) and released at once, so
 * what is mapped at any time is one window per thread, not one per update.
 * A non-finite value marks its update in bad[] and the pass is abandoned.
 * acc_set: acc already holds the frames' sum (add to it, do not overwrite).
 * 0 (check bad), or -1 on a read error. */
static int fedavg_pass(fedavg *f, const size_t *live, size_t nl, const float *c, unsigned char *bad, int acc_set,
                       char *err, size_t errlen) {
    int stop = 0, rc = 0;
    #pragma omp parallel for num_threads(f->threads) schedule(dynamic, 1)
    for (size_t k = 0; k < f->n_items; k++) {
        int halt;
        #pragma omp atomic read
        halt = stop;
        if (halt) continue;
        const work_item *w = &f->items[k];
        const size_t n = w->count;
        float *buf = f->tbuf + (size_t)omp_get_thread_num() * f->chunk;
        float *acc = f->acc + f->tensor_off[w->t] + w->first;
        char e[NAWAL_AGG_REASON_BYTES];
        int fault = 0; /* 1 bad value, -1 read error */
        for (size_t q = 0; q < nl && !fault; q++) {
            member *m = &f->members[live[q]];
            size_t ti = m->map[w->t];
            int viewed;
            const float *x = nawal_agg_window(m->src, ti, w->first, n, f->no_view, buf, &viewed, e, sizeof e);
            if (!x) {
                fault = -1;
                break;
            }
            if (combine_check(acc, x, n, c[q], q == 0 && !acc_set) >= 0x7f800000u) {
                size_t p = nawal_agg_first_nonfinite(x, n);
                fault = 1;
                nawal_agg_nonfinite_reason(e, sizeof e, f->base->tensors[w->t].name, w->first, p, x[p]);
                #pragma omp critical(nawal_agg_msg)
                {
                    if (!bad[q]) {
                        bad[q] = 1;
                        free(m->reason);
                        m->reason = strdup(e);
                    }
                }
            }
            if (viewed && m->src->release) m->src->release(m->src, ti, w->first, n);
        }
        if (fault < 0) {
            #pragma omp critical(nawal_agg_msg)
            {
                if (rc == 0) nawal_fail(err, errlen, "%s", e);
                rc = -1;
            }
        }
        if (fault) {
            #pragma omp atomic write
            stop = 1;
        }
    }
    return rc;
}

/* acc = sum_q c_q frame_q over the live frames, in order, each frame
 * checked whole before it is added (nawal_delta_accumulate). A bad frame
 * marks bad[q] (reason kept) and stops. 0 (check bad), or -1 when out of
 * memory for a payload (not the update's fault). */
static int fedavg_frames(fedavg *f, const size_t *live, size_t nf, const float *c, unsigned char *bad, char *err,
                         size_t errlen) {
    #pragma omp parallel for num_threads(f->threads) schedule(static)
    for (size_t k = 0; k < f->n_items; k++) {
        const work_item *w = &f->items[k];
        memset(f->acc + f->tensor_off[w->t] + w->first, 0, w->count * sizeof(float));
        if (f->wsum) memset(f->wsum + f->tensor_off[w->t] + w->first, 0, w->count * sizeof(float));
    }
    for (size_t q = 0; q < nf; q++) {
        member *m = &f->members[live[q]];
        char e[NAWAL_AGG_REASON_BYTES];
        int rc = nawal_delta_accumulate(f->acc, f->wsum, f->n_floats, c[q], m->frame->bytes, m->frame->len, e,
                                        sizeof e);
        if (rc == 0) {
            frame_release(m->frame);
            continue;
        }
        if (!strncmp(e, "out of memory", 13)) return nawal_fail(err, errlen, "%s: %s", m->frame->label, e);
        bad[q] = 1;
        free(m->reason);
        m->reason = strdup(e);
        break;
    }
    return 0;
}

/* fedavg-sparse: acc[e] /= (the frames' weight on e + dense), dense = the
 * dense updates' total weight (they send every entry); 0 where no update
 * sends e. Every entry's divisor is a sum of the same c's as its numerator. */
static void fedavg_per_entry(fedavg *f, float dense) {
    #pragma omp parallel for num_threads(f->threads) schedule(static)
    for (size_t k = 0; k < f->n_items; k++) {
        const work_item *w = &f->items[k];
        float *acc = f->acc + f->tensor_off[w->t] + w->first;
        const float *ws = f->wsum + f->tensor_off[w->t] + w->first;
        for (size_t i = 0; i < w->count; i++) {
            float den = ws[i] + dense;
            acc[i] = den > 0.0f ? acc[i] / den : 0.0f;
        }
    }
}

/* Combines the live updates into acc: passes until one finds no bad value,
 * each without the updates the previous one caught. 0, NAWAL_AGG_REJECTED
 * (none left), -1. */
static int fedavg_combine(fedavg *f, char *err, size_t errlen) {
    size_t *live = malloc((f->n_members ? f->n_members : 1) * sizeof *live);
    float *c = malloc((f->n_members ? f->n_members : 1) * sizeof *c);
    unsigned char *bad = calloc(f->n_members ? f->n_members : 1, 1);
    int rc = !live || !c || !bad ? nawal_fail(err, errlen, "out of memory") : 0;
    for (;;) {
        if (rc) break;
        size_t nl = 0;
        double w = 0;
        size_t nf = 0; /* live frames first (in update order), then the dense updates */
        for (int dense = 0; dense < 2; dense++)
            for (size_t j = 0; j < f->n_members; j++)
                if (!f->members[j].rejected && (f->members[j].frame == NULL) == dense) {
                    live[nl++] = j;
                    nf += !dense;
                    w += (double)f->members[j].weight;
                }
        if (nl == 0) {
            nawal_fail(err, errlen, "no accepted update to aggregate");
            rc = NAWAL_AGG_REJECTED;
            break;
        }
        for (size_t q = 0; q < nl; q++) c[q] = (float)((double)f->members[live[q]].weight / w);
        memset(bad, 0, nl);
        if (fedavg_windows(f, f->chunk)) {
            rc = nawal_fail(err, errlen, "out of memory");
            break;
        }
        if (nf && (rc = fedavg_frames(f, live, nf, c, bad, err, errlen))) break;
        int frame_bad = memchr(bad, 1, nf) != NULL;
        if (!frame_bad && nl > nf && (rc = fedavg_pass(f, live + nf, nl - nf, c + nf, bad + nf, nf > 0, err, errlen))) break;
        int again = 0;
        for (size_t q = 0; q < nl; q++)
            if (bad[q]) {
                member *m = &f->members[live[q]];
                member_close(m);
                m->rejected = 1;
                again = 1;
            }
        if (!again) {
            if (f->per_entry && nf) {
                float dense = 0.0f;
                for (size_t q = nf; q < nl; q++) dense += c[q];
                fedavg_per_entry(f, dense);
            }
            break;
        }
    }
    free(live);
    free(c);
    free(bad);
    return rc;
}

static int fedavg_finish(nawal_aggregator *a, char *err, size_t errlen) {
    fedavg *f = (fedavg *)a;
    if (!f->base) return nawal_fail(err, errlen, "finish before begin");
    if (f->finished) return nawal_fail(err, errlen, "finish called twice");
    f->finished = 1;
    int rc = fedavg_combine(f, err, errlen);
    for (size_t j = 0; j < f->n_members; j++) member_close(&f->members[j]); /* the deltas are done with */
    f->finished = rc == 0 ? 2 : 3;
    return rc;
}

int nawal_agg_write_model(nawal_tensor_source *base, const float *delta, const size_t *tensor_off,
                          nawal_byte_sink sink, void *ctx, char *err, size_t errlen) {
    nawal_tensor_source *b = base;
    size_t n = b->n_tensors;
    nawal_st_tensor *ts = calloc(n ? n : 1, sizeof *ts);
    float *buf = alloc_aligned(FINISH_CHUNK * sizeof(float));
    uint8_t *head = NULL;
    size_t head_len = 0;
    int rc = !ts || !buf ? nawal_fail(err, errlen, "out of memory") : 0;
    for (size_t t = 0; rc == 0 && t < n; t++) {
        const nawal_tensor_info *x = &b->tensors[t];
        ts[t] = (nawal_st_tensor){.name = x->name, .dtype = NAWAL_ST_F32, .ndim = x->ndim, .nbytes = x->numel * sizeof(float)};
        memcpy(ts[t].shape, x->shape, sizeof ts[t].shape);
    }
    if (rc == 0) rc = nawal_st_encode_header(ts, n, b->meta_kv, &head, &head_len, err, errlen);
    if (rc == 0) rc = sink(ctx, head, head_len, err, errlen);
    for (size_t t = 0; rc == 0 && t < n; t++) {
        const nawal_tensor_info *x = &b->tensors[t];
        const float *d = delta + tensor_off[t];
        for (size_t first = 0; rc == 0 && first < x->numel; first += FINISH_CHUNK) {
            size_t cnt = x->numel - first < FINISH_CHUNK ? x->numel - first : FINISH_CHUNK;
            if ((rc = b->read(b, t, first, cnt, buf, err, errlen))) break;
            for (size_t i = 0; i < cnt; i++) buf[i] += d[first + i];
            size_t p = nawal_agg_first_nonfinite(buf, cnt);
            if (p < cnt) {
                nawal_fail(err, errlen, "the aggregate is not finite: tensor '%.80s' element %zu = %g (float overflow)",
                           x->name, first + p, (double)buf[p]);
                rc = NAWAL_AGG_REJECTED;
                break;
            }
            rc = sink(ctx, buf, cnt * sizeof(float), err, errlen);
        }
    }
    free(ts);
    free(buf);
    free(head);
    return rc;
}

static int fedavg_write(nawal_aggregator *a, nawal_byte_sink sink, void *ctx, char *err, size_t errlen) {
    fedavg *f = (fedavg *)a;
    if (f->finished != 2) return nawal_fail(err, errlen, "no aggregate to write (finish first)");
    return nawal_agg_write_model(f->base, f->acc, f->tensor_off, sink, ctx, err, errlen);
}

static int fedavg_verdict(nawal_aggregator *a, size_t i, char *reason, size_t reasonlen) {
    fedavg *f = (fedavg *)a;
    if (i >= f->n_members) return nawal_fail(reason, reasonlen, "no update %zu", i);
    const member *m = &f->members[i];
    if (!m->rejected) {
        if (reason && reasonlen) reason[0] = 0;
        return 0;
    }
    nawal_fail(reason, reasonlen, "%s", m->reason ? m->reason : "rejected");
    return NAWAL_AGG_REJECTED;
}

static void fedavg_destroy(nawal_aggregator *a) {
    fedavg *f = (fedavg *)a;
    fedavg_reset(f);
    free(f);
}

int nawal_fedavg_create(nawal_aggregator **out, const nawal_fedavg_options *o, char *err, size_t errlen) {
    *out = NULL;
    nawal_fedavg_options def = {0, 0, 0, 0};
    if (!o) o = &def;
    size_t chunk = o->chunk ? o->chunk : NAWAL_AGG_DEFAULT_CHUNK;
    if (chunk > ((size_t)1 << 24)) return nawal_fail(err, errlen, "fedavg: chunk of %zu floats is too large", chunk);
    fedavg *f = calloc(1, sizeof *f);
    if (!f) return nawal_fail(err, errlen, "out of memory");
    f->pub.name = o->per_entry ? "fedavg-sparse" : "fedavg";
    f->per_entry = o->per_entry;
    f->pub.begin = fedavg_begin;
    f->pub.add = fedavg_add;
    f->pub.add_frame = fedavg_add_frame;
    f->pub.finish = fedavg_finish;
    f->pub.write = fedavg_write;
    f->pub.verdict = fedavg_verdict;
    f->pub.destroy = fedavg_destroy;
    f->threads = o->threads > 0 ? o->threads : omp_get_max_threads();
    if (f->threads < 1) f->threads = 1;
    f->chunk = chunk;
    f->no_view = o->no_view;
    *out = &f->pub;
    return 0;
}

int nawal_aggregator_create(nawal_aggregator **out, const char *strategy, int threads, const char *spill_dir,
                            char *err, size_t errlen) {
    *out = NULL;
    int sparse = strategy && !strcmp(strategy, "fedavg-sparse");
    if (!strategy || !strcmp(strategy, "fedavg") || sparse) {
        nawal_fedavg_options o = {threads, 0, 0, sparse};
        return nawal_fedavg_create(out, &o, err, errlen);
    }
    nawal_robust_options ro;
    int r = nawal_robust_parse(strategy, &ro, err, errlen);
    if (r < 0) return -1;
    if (r > 0) {
        ro.threads = threads;
        ro.spill_dir = spill_dir;
        return nawal_robust_create(out, &ro, err, errlen);
    }
    return nawal_fail(err, errlen,
                      "unknown aggregation strategy '%s' (known: fedavg, fedavg-sparse, median, trimmed-mean[:TRIM], "
                      "krum[:F[:M]])",
                      strategy);
}

int nawal_aggregator_known(const char *strategy, char *err, size_t errlen) {
    nawal_aggregator *a;
    if (nawal_aggregator_create(&a, strategy, 1, NULL, err, errlen)) return -1;
    nawal_aggregator_destroy(a);
    return 0;
}

void nawal_aggregator_destroy(nawal_aggregator *a) {
    if (a) a->destroy(a);
}

/* ---- a round's aggregation ------------------------------------------------ */

static int blob_sink(void *ctx, const void *buf, size_t len, char *err, size_t errlen) {
    return nawal_blobstore_writer_write(ctx, buf, len, err, errlen);
}

void nawal_agg_result_free(nawal_agg_result *res) {
    if (!res) return;
    free(res->verdicts);
    res->verdicts = NULL;
}

int nawal_round_aggregate(nawal_store *s, int64_t round_id, const nawal_agg_config *cfg, size_t min_accepted,
                          nawal_agg_result *res, char *err, size_t errlen) {
    memset(res, 0, sizeof *res);
    int64_t t0 = mono_ms();
    if (min_accepted < 1) min_accepted = 1;
    nawal_round r;
    int rc = nawal_store_round_get(s, round_id, &r, err, errlen);
    if (rc) return -1;
    nawal_submission *subs = NULL;
    size_t n = 0;
    if (nawal_store_submissions(s, round_id, &subs, &n, err, errlen)) return -1;
    res->n_updates = n;
    res->verdicts = calloc(n ? n : 1, sizeof *res->verdicts);
    nawal_aggregator *agg = NULL;
    nawal_tensor_source *base = NULL;
    nawal_blob_writer *w = NULL;
    if (!res->verdicts) {
        rc = nawal_fail(err, errlen, "out of memory");
        goto out;
    }
    char spill[4096];
    snprintf(spill, sizeof spill, "%s/blobs", nawal_store_dir(s));
    if ((rc = nawal_aggregator_create(&agg, cfg ? cfg->strategy : NULL, cfg ? cfg->threads : 0, spill, err, errlen)))
        goto out;
    rc = nawal_tensor_source_open_blob(&base, s, r.base_cid, err, errlen);
    if (rc) {
        rc = -1; /* a bad base is the coordinator's problem, never an update's */
        goto out;
    }
    if ((rc = agg->begin(agg, base, err, errlen))) goto out;

    /* one descriptor per open update */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < n + 64) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > n + 64 ? n + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* every update is offered; the strategy may still drop some in finish */
    size_t *offered = malloc((n ? n : 1) * sizeof *offered), n_offered = 0;
    if (!offered) {
        rc = nawal_fail(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        nawal_agg_verdict *v = &res->verdicts[i];
        memcpy(v->validator, subs[i].validator, 32);
        offered[i] = SIZE_MAX;
        if (subs[i].quality_ppm < r.min_quality_ppm) {
            snprintf(v->reason, sizeof v->reason, "reported quality %u ppm is below the round's minimum %u ppm",
                     subs[i].quality_ppm, r.min_quality_ppm);
            continue;
        }
        nawal_tensor_source *d = NULL;
        nawal_delta_frame *fr = NULL;
        int orc = nawal_update_open_blob(&d, &fr, s, subs[i].delta_cid, v->reason, sizeof v->reason);
        if (orc < 0) {
            rc = nawal_fail(err, errlen, "%s", v->reason);
            break;
        }
        if (orc == NAWAL_AGG_REJECTED) continue; /* neither valid safetensors nor a frame; reason already in v */
        if (fr && !agg->add_frame) {
            nawal_delta_frame_close(fr);
            snprintf(v->reason, sizeof v->reason, "the %s strategy does not take compressed deltas", agg->name);
            continue;
        }
        int arc = fr ? agg->add_frame(agg, fr, subs[i].num_examples, v->reason, sizeof v->reason)
                     : agg->add(agg, d, subs[i].num_examples, v->reason, sizeof v->reason);
        if (arc < 0) {
            rc = nawal_fail(err, errlen, "%s", v->reason);
            break;
        }
        offered[i] = n_offered++;
    }
    int frc = rc ? rc : agg->finish(agg, err, errlen);
    for (size_t i = 0; frc >= 0 && i < n; i++) {
        nawal_agg_verdict *v = &res->verdicts[i];
        if (offered[i] == SIZE_MAX || agg->verdict(agg, offered[i], v->reason, sizeof v->reason)) continue;
        v->accepted = 1;
        res->n_accepted++;
        uint64_t te = res->total_examples + subs[i].num_examples;
        res->total_examples = te < res->total_examples ? UINT64_MAX : te;
    }
    free(offered);
    if (frc < 0) {
        rc = -1;
        goto out;
    }
    if (frc == NAWAL_AGG_REJECTED || res->n_accepted < min_accepted) {
        snprintf(res->note, sizeof res->note, "%zu of %zu updates usable, fewer than the minimum %zu", res->n_accepted,
                 n, min_accepted);
        rc = 0;
        goto out;
    }
    if ((rc = nawal_blobstore_writer_open(s, &w, err, errlen))) goto out;
    rc = agg->write(agg, blob_sink, w, err, errlen);
    if (rc == NAWAL_AGG_REJECTED) {
        snprintf(res->note, sizeof res->note, "%s", err);
        rc = 0;
        goto out;
    }
    if (rc) goto out;
    rc = nawal_blobstore_writer_commit(w, res->model_cid, &res->model_size, err, errlen);
    w = NULL;
    if (rc) goto out;
    res->has_model = 1;
out:
    nawal_blobstore_writer_abort(w);
    nawal_aggregator_destroy(agg);
    nawal_tensor_source_close(base);
    free(subs);
    res->duration_ms = mono_ms() - t0;
    if (rc) {
        nawal_agg_result_free(res);
        return -1;
    }
    return 0;
}
