/* safetensors.c -- safetensors reader and writer (see safetensors.h).
 *
 * Reading: the 8-byte length prefix is checked against the input size and
 * the 100 MB limit before anything is parsed; the header is parsed with
 * jansson (duplicate keys rejected), every entry is validated (types, dtype,
 * rank, dimensions, overflow-checked byte size, offsets inside the data
 * buffer), then tensors are sorted by offset to detect overlaps and by name
 * to serve nawal_st_find() with a binary search.
 *
 * Tensor data must be at least 4-byte aligned for callers to read floats.
 * nawal_st_read() keeps the file buffer it read when every tensor already
 * sits at a 4-byte aligned file offset (true for files from this writer and
 * from the reference implementation, which both pad the header); otherwise,
 * and always for nawal_st_parse(), the tensors are copied into one owned
 * buffer at 16-byte aligned positions.
 *
 * Writing: the header is built with jansson in the caller's order (jansson
 * keeps insertion order), padded with spaces to a multiple of 8 bytes, and
 * written with the data to a mkstemp() file next to the destination, which is
 * fsync'ed and renamed over it; the directory is then fsync'ed too. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "safetensors.h"
#include "error.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_META_KEY "__metadata__"
#define ST_PACK_ALIGN 16
/* Names are truncated to this many bytes inside error messages. */
#define ST_NAME_SHOWN 80

struct st_entry {
    nawal_st_tensor t;
    char *name;      /* owned; t.name points here */
    uint64_t begin;  /* offsets relative to the data buffer */
    uint64_t end;
};

struct nawal_st_file {
    struct st_entry *entries;    /* header order */
    size_t n;
    struct st_entry **by_begin;  /* sorted by (begin, end) */
    struct st_entry **by_name;   /* sorted by name */
    char **meta_keys;
    char **meta_vals;
    size_t nmeta;
    uint8_t *blob;               /* owns all tensor data (NULL for an index) */
    uint64_t data_start;         /* file offset of the data buffer: 8 + header length */
};

/* Data pointer for zero-byte tensors, so callers never see NULL. */
static const double st_empty_data[1];

static char *st_strdup(const char *s) {
    size_t len = strlen(s) + 1;
    char *p = malloc(len);
    if (p) memcpy(p, s, len);
    return p;
}

static uint64_t st_load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void st_store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

size_t nawal_st_dtype_size(nawal_st_dtype dtype) {
    switch (dtype) {
    case NAWAL_ST_F32: return 4;
    case NAWAL_ST_I32: return 4;
    }
    return 0;
}

const char *nawal_st_dtype_name(nawal_st_dtype dtype) {
    switch (dtype) {
    case NAWAL_ST_F32: return "F32";
    case NAWAL_ST_I32: return "I32";
    }
    return NULL;
}

/* Element count * element size with overflow checks. Returns -1 on overflow
 * (or a result that does not fit in size_t). A zero dimension makes the
 * tensor empty whatever the other dimensions are. */
static int st_shape_nbytes(const int64_t *shape, int ndim, size_t esize, size_t *out) {
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) { *out = 0; return 0; }
    }
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (count > UINT64_MAX / d) return -1;
        count *= d;
    }
    if (count > UINT64_MAX / esize) return -1;
    uint64_t bytes = count * esize;
    if (bytes > SIZE_MAX) return -1;
    *out = (size_t)bytes;
    return 0;
}

void nawal_st_free(nawal_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->entries[i].name);
    for (size_t i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->entries);
    free(f->by_begin);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->blob);
    free(f);
}

size_t nawal_st_count(const nawal_st_file *f) { return f ? f->n : 0; }

const nawal_st_tensor *nawal_st_at(const nawal_st_file *f, size_t i) {
    if (!f || i >= f->n) return NULL;
    return &f->entries[i].t;
}

static int st_cmp_name_key(const void *key, const void *elem) {
    const struct st_entry *const *e = elem;
    return strcmp((const char *)key, (*e)->name);
}

const nawal_st_tensor *nawal_st_find(const nawal_st_file *f, const char *name) {
    if (!f || !name || f->n == 0) return NULL;
    struct st_entry **hit = bsearch(name, f->by_name, f->n, sizeof *f->by_name, st_cmp_name_key);
    return hit ? &(*hit)->t : NULL;
}

const char *nawal_st_metadata(const nawal_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->nmeta; i++) {
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    }
    return NULL;
}

size_t nawal_st_metadata_count(const nawal_st_file *f) { return f ? f->nmeta : 0; }

int nawal_st_metadata_at(const nawal_st_file *f, size_t i, const char **key, const char **value) {
    if (!f || i >= f->nmeta) return -1;
    if (key) *key = f->meta_keys[i];
    if (value) *value = f->meta_vals[i];
    return 0;
}

/* ---------------------------------------------------------------- reading */

static int st_cmp_begin(const void *a, const void *b) {
    const struct st_entry *x = *(const struct st_entry *const *)a;
    const struct st_entry *y = *(const struct st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int st_cmp_name(const void *a, const void *b) {
    const struct st_entry *x = *(const struct st_entry *const *)a;
    const struct st_entry *y = *(const struct st_entry *const *)b;
    return strcmp(x->name, y->name);
}

/* Validates the length prefix against the input size; on success stores the
 * header length. Shared by nawal_st_read (before reading the whole file) and
 * the parser. */
static int st_check_prefix(const uint8_t *buf, uint64_t len, const char *label,
                           uint64_t *hlen, char *err, size_t errlen) {
    if (len < 8) {
        (void)nawal_fail(err, errlen, "%s: file is %llu bytes, too short for the 8-byte header length",
               label, (unsigned long long)len);
        return -1;
    }
    uint64_t n = st_load_le64(buf);
    if (n > NAWAL_ST_MAX_HEADER) {
        (void)nawal_fail(err, errlen, "%s: header length %llu exceeds the %llu-byte limit",
               label, (unsigned long long)n, (unsigned long long)NAWAL_ST_MAX_HEADER);
        return -1;
    }
    if (n > len - 8) {
        (void)nawal_fail(err, errlen, "%s: header length %llu is larger than the %llu bytes after the length prefix (truncated file?)",
               label, (unsigned long long)n, (unsigned long long)(len - 8));
        return -1;
    }
    *hlen = n;
    return 0;
}

static int st_get_int(json_t *v, long long *out) {
    if (!json_is_integer(v)) return -1;
    *out = (long long)json_integer_value(v);
    return 0;
}

static int st_parse_entry(struct st_entry *e, const char *name, json_t *v, uint64_t dlen,
                          const char *label, char *err, size_t errlen) {
    if (!json_is_object(v)) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': header entry is not a JSON object",
               label, ST_NAME_SHOWN, name);
        return -1;
    }
    json_t *dtype = json_object_get(v, "dtype");
    json_t *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offs ? "data_offsets" : NULL;
    if (missing) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': missing \"%s\"", label, ST_NAME_SHOWN, name, missing);
        return -1;
    }

    if (!json_is_string(dtype)) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': \"dtype\" is not a string", label, ST_NAME_SHOWN, name);
        return -1;
    }
    const char *ds = json_string_value(dtype);
    if (strcmp(ds, "F32") == 0) {
        e->t.dtype = NAWAL_ST_F32;
    } else if (strcmp(ds, "I32") == 0) {
        e->t.dtype = NAWAL_ST_I32;
    } else {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': unsupported dtype '%.16s' (only F32 and I32 are supported)",
               label, ST_NAME_SHOWN, name, ds);
        return -1;
    }

    if (!json_is_array(shape)) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': \"shape\" is not an array", label, ST_NAME_SHOWN, name);
        return -1;
    }
    size_t ndim = json_array_size(shape);
    if (ndim > NAWAL_ST_MAX_DIMS) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': %zu dimensions, at most %d are supported",
               label, ST_NAME_SHOWN, name, ndim, NAWAL_ST_MAX_DIMS);
        return -1;
    }
    e->t.ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) {
        long long d;
        if (st_get_int(json_array_get(shape, i), &d) != 0) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s': shape[%zu] is not an integer",
                   label, ST_NAME_SHOWN, name, i);
            return -1;
        }
        if (d < 0) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s': shape[%zu] is negative (%lld)",
                   label, ST_NAME_SHOWN, name, i, d);
            return -1;
        }
        e->t.shape[i] = (int64_t)d;
    }

    long long b, en;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        st_get_int(json_array_get(offs, 0), &b) != 0 ||
        st_get_int(json_array_get(offs, 1), &en) != 0) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': \"data_offsets\" is not an array of 2 integers",
               label, ST_NAME_SHOWN, name);
        return -1;
    }
    if (b < 0 || en < 0) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': negative data_offsets [%lld, %lld]",
               label, ST_NAME_SHOWN, name, b, en);
        return -1;
    }
    if (b > en) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': data_offsets begin %lld is after end %lld",
               label, ST_NAME_SHOWN, name, b, en);
        return -1;
    }
    if ((uint64_t)en > dlen) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': data_offsets end %lld is past the end of the %llu-byte data buffer",
               label, ST_NAME_SHOWN, name, en, (unsigned long long)dlen);
        return -1;
    }
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;

    if (st_shape_nbytes(e->t.shape, e->t.ndim, nawal_st_dtype_size(e->t.dtype), &e->t.nbytes) != 0) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': shape element count overflows", label, ST_NAME_SHOWN, name);
        return -1;
    }
    if ((uint64_t)e->t.nbytes != e->end - e->begin) {
        (void)nawal_fail(err, errlen, "%s: tensor '%.*s': shape needs %zu bytes but data_offsets [%lld, %lld] span %llu",
               label, ST_NAME_SHOWN, name, e->t.nbytes, b, en, (unsigned long long)(e->end - e->begin));
        return -1;
    }

    e->name = st_strdup(name);
    if (!e->name) {
        (void)nawal_fail(err, errlen, "%s: out of memory", label);
        return -1;
    }
    e->t.name = e->name;
    return 0;
}

static int st_parse_metadata(nawal_st_file *f, json_t *meta, const char *label, char *err, size_t errlen) {
    if (!json_is_object(meta)) {
        (void)nawal_fail(err, errlen, "%s: \"%s\" is not a JSON object", label, ST_META_KEY);
        return -1;
    }
    size_t cap = json_object_size(meta);
    if (cap == 0) return 0;
    f->meta_keys = calloc(cap, sizeof *f->meta_keys);
    f->meta_vals = calloc(cap, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) {
        (void)nawal_fail(err, errlen, "%s: out of memory", label);
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v)) {
            (void)nawal_fail(err, errlen, "%s: metadata value for '%.*s' is not a string", label, ST_NAME_SHOWN, k);
            return -1;
        }
        char *kc = st_strdup(k);
        char *vc = st_strdup(json_string_value(v));
        if (!kc || !vc) {
            free(kc);
            free(vc);
            (void)nawal_fail(err, errlen, "%s: out of memory", label);
            return -1;
        }
        f->meta_keys[f->nmeta] = kc;
        f->meta_vals[f->nmeta] = vc;
        f->nmeta++;
    }
    return 0;
}

/* Places the tensor data. With `owned` (the buffer holding the whole input,
 * allocated by us) the buffer is adopted when every tensor is 4-byte aligned
 * in it; *adopted tells the caller not to free it. */
static int st_place_data(nawal_st_file *f, const uint8_t *data, uint8_t *owned, int *adopted,
                         const char *label, char *err, size_t errlen) {
    if (owned) {
        int aligned = 1;
        for (size_t i = 0; i < f->n && aligned; i++) {
            if (((uintptr_t)(data + f->entries[i].begin)) % 4 != 0) aligned = 0;
        }
        if (aligned) {
            for (size_t i = 0; i < f->n; i++) {
                struct st_entry *e = &f->entries[i];
                e->t.data = e->t.nbytes ? (const void *)(data + e->begin) : (const void *)st_empty_data;
            }
            f->blob = owned;
            *adopted = 1;
            return 0;
        }
    }
    size_t total = 0;
    for (size_t i = 0; i < f->n; i++) {
        size_t nb = f->entries[i].t.nbytes;
        size_t padded = (nb + (ST_PACK_ALIGN - 1)) / ST_PACK_ALIGN * ST_PACK_ALIGN;
        if (padded < nb || total > SIZE_MAX - padded) {
            (void)nawal_fail(err, errlen, "%s: tensor data too large", label);
            return -1;
        }
        total += padded;
    }
    f->blob = malloc(total ? total : 1);
    if (!f->blob) {
        (void)nawal_fail(err, errlen, "%s: out of memory allocating %zu bytes of tensor data", label, total);
        return -1;
    }
    size_t pos = 0;
    for (size_t i = 0; i < f->n; i++) {
        struct st_entry *e = &f->entries[i];
        if (e->t.nbytes == 0) {
            e->t.data = st_empty_data;
            continue;
        }
        memcpy(f->blob + pos, data + e->begin, e->t.nbytes);
        e->t.data = f->blob + pos;
        pos += (e->t.nbytes + (ST_PACK_ALIGN - 1)) / ST_PACK_ALIGN * ST_PACK_ALIGN;
    }
    return 0;
}

/* Parses and validates buf[0..len). With index_len != 0 (nawal_st_read_index)
 * buf holds only the length prefix and the header of a file of index_len
 * bytes: offsets are checked against that size and no data is placed. */
static int st_parse_impl(nawal_st_file **out, const uint8_t *buf, size_t len, uint8_t *owned,
                         int *adopted, uint64_t index_len, const char *label, char *err, size_t errlen) {
    *adopted = 0;
    if (!label) label = "<memory>";
    if (!out) {
        (void)nawal_fail(err, errlen, "%s: no output pointer given", label);
        return -1;
    }
    *out = NULL;
    if (!buf && len > 0) {
        (void)nawal_fail(err, errlen, "%s: NULL buffer", label);
        return -1;
    }
    uint64_t hlen;
    if (st_check_prefix(buf, index_len ? index_len : len, label, &hlen, err, errlen) != 0) return -1;
    if (index_len && (uint64_t)len < 8 + hlen) {
        (void)nawal_fail(err, errlen, "%s: header index needs %llu bytes, got %zu", label,
                         (unsigned long long)(8 + hlen), len);
        return -1;
    }
    const uint8_t *data = index_len ? NULL : buf + 8 + hlen;
    uint64_t dlen = (index_len ? index_len : (uint64_t)len) - 8 - hlen;

    json_error_t je;
    json_t *root = json_loadb((const char *)(buf + 8), (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        (void)nawal_fail(err, errlen, "%s: header is not valid JSON: %s (header byte %d)", label, je.text, je.position);
        return -1;
    }
    nawal_st_file *f = NULL;
    if (!json_is_object(root)) {
        (void)nawal_fail(err, errlen, "%s: header is not a JSON object", label);
        goto fail;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        (void)nawal_fail(err, errlen, "%s: out of memory", label);
        goto fail;
    }
    size_t cap = json_object_size(root);
    if (cap > 0) {
        f->entries = calloc(cap, sizeof *f->entries);
        if (!f->entries) {
            (void)nawal_fail(err, errlen, "%s: out of memory", label);
            goto fail;
        }
    }

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, ST_META_KEY) == 0) {
            if (st_parse_metadata(f, val, label, err, errlen) != 0) goto fail;
            continue;
        }
        if (key[0] == '\0') { /* the writer refuses these too: read only what we could write */
            (void)nawal_fail(err, errlen, "%s: a tensor has an empty name", label);
            goto fail;
        }
        if (st_parse_entry(&f->entries[f->n], key, val, dlen, label, err, errlen) != 0) {
            free(f->entries[f->n].name);
            f->entries[f->n].name = NULL;
            goto fail;
        }
        f->n++;
    }

    if (f->n > 0) {
        f->by_begin = malloc(f->n * sizeof *f->by_begin);
        f->by_name = malloc(f->n * sizeof *f->by_name);
        if (!f->by_begin || !f->by_name) {
            (void)nawal_fail(err, errlen, "%s: out of memory", label);
            goto fail;
        }
        for (size_t i = 0; i < f->n; i++) f->by_begin[i] = f->by_name[i] = &f->entries[i];
        qsort(f->by_begin, f->n, sizeof *f->by_begin, st_cmp_begin);
        qsort(f->by_name, f->n, sizeof *f->by_name, st_cmp_name);

        /* Sorted by begin, a tensor overlaps an earlier one exactly when it
         * starts before the furthest end seen so far. */
        const struct st_entry *furthest = f->by_begin[0];
        for (size_t i = 1; i < f->n; i++) {
            const struct st_entry *e = f->by_begin[i];
            if (e->begin < furthest->end) {
                (void)nawal_fail(err, errlen, "%s: tensors '%.*s' [%llu, %llu) and '%.*s' [%llu, %llu) overlap in the data buffer",
                       label, ST_NAME_SHOWN, furthest->name, (unsigned long long)furthest->begin,
                       (unsigned long long)furthest->end, ST_NAME_SHOWN, e->name,
                       (unsigned long long)e->begin, (unsigned long long)e->end);
                goto fail;
            }
            if (e->end > furthest->end) furthest = e;
        }
        /* jansson already rejects duplicate keys; this keeps the lookup
         * table sound whatever the JSON layer does. */
        for (size_t i = 1; i < f->n; i++) {
            if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
                (void)nawal_fail(err, errlen, "%s: duplicate tensor name '%.*s'", label, ST_NAME_SHOWN, f->by_name[i]->name);
                goto fail;
            }
        }
    }

    f->data_start = 8 + hlen;
    if (!index_len && st_place_data(f, data, owned, adopted, label, err, errlen) != 0) goto fail;
    json_decref(root);
    *out = f;
    return 0;

fail:
    nawal_st_free(f);
    json_decref(root);
    return -1;
}

int nawal_st_parse(nawal_st_file **out, const uint8_t *buf, size_t len,
                   const char *label, char *err, size_t errlen) {
    int adopted;
    return st_parse_impl(out, buf, len, NULL, &adopted, 0, label, err, errlen);
}

/* Reads exactly `len` bytes at the current position. */
static int st_read_all(int fd, uint8_t *p, size_t len) {
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = 0; /* file shrank under us */
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int nawal_st_read(nawal_st_file **out, const char *path, char *err, size_t errlen) {
    if (out) *out = NULL;
    if (!path) {
        (void)nawal_fail(err, errlen, "safetensors: no path given");
        return -1;
    }
    if (!out) {
        (void)nawal_fail(err, errlen, "%s: no output pointer given", path);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        (void)nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        (void)nawal_fail(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        (void)nawal_fail(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize > SIZE_MAX) {
        (void)nawal_fail(err, errlen, "%s: file too large (%llu bytes)", path, (unsigned long long)fsize);
        close(fd);
        return -1;
    }

    /* Check the length prefix before reading (and allocating) the rest, so a
     * bogus header on a large file is rejected cheaply. */
    uint8_t prefix[8];
    uint64_t hlen;
    if (fsize >= 8 && st_read_all(fd, prefix, 8) != 0) {
        (void)nawal_fail(err, errlen, "%s: read error: %s", path, errno ? strerror(errno) : "file changed while reading");
        close(fd);
        return -1;
    }
    if (st_check_prefix(prefix, fsize, path, &hlen, err, errlen) != 0) {
        close(fd);
        return -1;
    }

    size_t len = (size_t)fsize;
    uint8_t *buf = malloc(len);
    if (!buf) {
        (void)nawal_fail(err, errlen, "%s: out of memory reading %zu bytes", path, len);
        close(fd);
        return -1;
    }
    memcpy(buf, prefix, 8);
    if (st_read_all(fd, buf + 8, len - 8) != 0) {
        (void)nawal_fail(err, errlen, "%s: read error: %s", path, errno ? strerror(errno) : "file changed while reading");
        free(buf);
        close(fd);
        return -1;
    }
    close(fd);

    int adopted = 0;
    int rc = st_parse_impl(out, buf, len, buf, &adopted, 0, path, err, errlen);
    if (!adopted) free(buf);
    return rc;
}

int nawal_st_read_index(nawal_st_file **out, int fd, const char *label, char *err, size_t errlen) {
    if (!label) label = "<fd>";
    if (out) *out = NULL;
    if (!out) return nawal_fail(err, errlen, "%s: no output pointer given", label);
    struct stat sb;
    if (fstat(fd, &sb) != 0) return nawal_fail(err, errlen, "%s: cannot stat: %s", label, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return nawal_fail(err, errlen, "%s: not a regular file", label);
    uint64_t fsize = (uint64_t)sb.st_size;
    uint8_t prefix[8];
    uint64_t hlen;
    if (fsize >= 8 && pread(fd, prefix, 8, 0) != 8)
        return nawal_fail(err, errlen, "%s: cannot read the header length", label);
    if (st_check_prefix(prefix, fsize, label, &hlen, err, errlen) != 0) return -1;
    /* hlen <= NAWAL_ST_MAX_HEADER and <= the file's size: bounded by both */
    size_t len = (size_t)(8 + hlen);
    uint8_t *buf = malloc(len);
    if (!buf) return nawal_fail(err, errlen, "%s: out of memory reading a %llu-byte header", label, (unsigned long long)hlen);
    memcpy(buf, prefix, 8);
    size_t got = 8;
    while (got < len) {
        ssize_t r = pread(fd, buf + got, len - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            return nawal_fail(err, errlen, "%s: read error in the header: %s", label, r < 0 ? strerror(errno) : "file shrank");
        }
        got += (size_t)r;
    }
    int adopted = 0;
    int rc = st_parse_impl(out, buf, len, NULL, &adopted, fsize, label, err, errlen);
    free(buf);
    return rc;
}

uint64_t nawal_st_data_offset(const nawal_st_file *f, size_t i) {
    if (!f || i >= f->n) return 0;
    return f->data_start + f->entries[i].begin;
}

/* ---------------------------------------------------------------- writing */


/* Builds the (unpadded) JSON header; returns a malloc'd string or NULL. */
static char *st_build_header(const char *path, const nawal_st_tensor *tensors, size_t n,
                             const char *const *meta_kv, int need_data, char *err, size_t errlen) {
    json_t *root = json_object();
    if (!root) {
        (void)nawal_fail(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    char *text = NULL;

    if (meta_kv && meta_kv[0]) {
        json_t *meta = json_object();
        if (!meta || json_object_set_new(root, ST_META_KEY, meta) != 0) {
            (void)nawal_fail(err, errlen, "%s: out of memory", path);
            goto done;
        }
        for (size_t i = 0; meta_kv[i]; i += 2) {
            const char *k = meta_kv[i], *v = meta_kv[i + 1];
            if (!v) {
                (void)nawal_fail(err, errlen, "%s: metadata key '%.*s' has no value", path, ST_NAME_SHOWN, k);
                goto done;
            }
            if (json_object_get(meta, k)) {
                (void)nawal_fail(err, errlen, "%s: duplicate metadata key '%.*s'", path, ST_NAME_SHOWN, k);
                goto done;
            }
            json_t *js = json_string(v);
            if (!js || json_object_set_new(meta, k, js) != 0) {
                (void)nawal_fail(err, errlen, "%s: metadata '%.*s' is not valid UTF-8 (or out of memory)",
                       path, ST_NAME_SHOWN, k);
                goto done;
            }
        }
    }

    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const nawal_st_tensor *t = &tensors[i];
        const char *name = t->name;
        if (!name || !*name) {
            (void)nawal_fail(err, errlen, "%s: tensor %zu has no name", path, i);
            goto done;
        }
        if (strcmp(name, ST_META_KEY) == 0) {
            (void)nawal_fail(err, errlen, "%s: tensor %zu may not be named '%s'", path, i, ST_META_KEY);
            goto done;
        }
        const char *dname = nawal_st_dtype_name(t->dtype);
        if (!dname) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s' has an unknown dtype %d", path, ST_NAME_SHOWN, name, (int)t->dtype);
            goto done;
        }
        if (t->ndim < 0 || t->ndim > NAWAL_ST_MAX_DIMS) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s' has %d dimensions, expected 0..%d",
                   path, ST_NAME_SHOWN, name, t->ndim, NAWAL_ST_MAX_DIMS);
            goto done;
        }
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) {
                (void)nawal_fail(err, errlen, "%s: tensor '%.*s' has negative shape[%d]", path, ST_NAME_SHOWN, name, d);
                goto done;
            }
        }
        size_t nb;
        if (st_shape_nbytes(t->shape, t->ndim, nawal_st_dtype_size(t->dtype), &nb) != 0 || nb != t->nbytes) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s': nbytes %zu does not match its shape and dtype",
                   path, ST_NAME_SHOWN, name, t->nbytes);
            goto done;
        }
        if (need_data && nb > 0 && !t->data) {
            (void)nawal_fail(err, errlen, "%s: tensor '%.*s' has no data", path, ST_NAME_SHOWN, name);
            goto done;
        }
        if (json_object_get(root, name)) {
            (void)nawal_fail(err, errlen, "%s: duplicate tensor name '%.*s'", path, ST_NAME_SHOWN, name);
            goto done;
        }
        if (off > (uint64_t)LLONG_MAX - nb) {
            (void)nawal_fail(err, errlen, "%s: total tensor data too large", path);
            goto done;
        }
        json_t *shape = json_array();
        json_t *offs = json_array();
        json_t *entry = json_object();
        int bad = !shape || !offs || !entry;
        for (int d = 0; !bad && d < t->ndim; d++) bad = json_array_append_new(shape, json_integer(t->shape[d])) != 0;
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)off)) != 0;
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)(off + nb))) != 0;
        bad = bad || json_object_set_new(entry, "dtype", json_string(dname)) != 0;
        if (!bad) { bad = json_object_set_new(entry, "shape", shape) != 0; shape = NULL; }
        if (!bad) { bad = json_object_set_new(entry, "data_offsets", offs) != 0; offs = NULL; }
        if (bad) {
            json_decref(shape);
            json_decref(offs);
            json_decref(entry);
            (void)nawal_fail(err, errlen, "%s: out of memory", path);
            goto done;
        }
        if (json_object_set_new(root, name, entry) != 0) {
            (void)nawal_fail(err, errlen, "%s: tensor name '%.*s' is not valid UTF-8 (or out of memory)",
                   path, ST_NAME_SHOWN, name);
            goto done;
        }
        off += nb;
    }

    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) (void)nawal_fail(err, errlen, "%s: cannot serialize the header", path);
done:
    json_decref(root);
    return text;
}

/* Length prefix + header padded with spaces so the data buffer starts at a
 * multiple of 8; label names the destination in messages. */
static int st_encode_header(const char *label, const nawal_st_tensor *tensors, size_t n,
                            const char *const *meta_kv, int need_data, uint8_t **out, size_t *out_len,
                            char *err, size_t errlen) {
    *out = NULL;
    *out_len = 0;
    if (n > 0 && !tensors) return nawal_fail(err, errlen, "%s: %zu tensors but no tensor array", label, n);
    char *json = st_build_header(label, tensors, n, meta_kv, need_data, err, errlen);
    if (!json) return -1;
    size_t jlen = strlen(json);
    size_t hlen = (jlen + 7) / 8 * 8;
    if (hlen > NAWAL_ST_MAX_HEADER) {
        (void)nawal_fail(err, errlen, "%s: header of %zu bytes exceeds the %llu-byte limit",
               label, hlen, (unsigned long long)NAWAL_ST_MAX_HEADER);
        free(json);
        return -1;
    }
    uint8_t *head = malloc(8 + hlen);
    if (!head) {
        (void)nawal_fail(err, errlen, "%s: out of memory", label);
        free(json);
        return -1;
    }
    st_store_le64(head, (uint64_t)hlen);
    memcpy(head + 8, json, jlen);
    memset(head + 8 + jlen, ' ', hlen - jlen);
    free(json);
    *out = head;
    *out_len = 8 + hlen;
    return 0;
}

int nawal_st_encode_header(const nawal_st_tensor *tensors, size_t n, const char *const *meta_kv, uint8_t **out,
                           size_t *len, char *err, size_t errlen) {
    return st_encode_header("safetensors header", tensors, n, meta_kv, 0, out, len, err, errlen);
}

int nawal_st_write(const char *path, const nawal_st_tensor *tensors, size_t n,
                   const char *const *meta_kv, char *err, size_t errlen) {
    if (!path || !*path) {
        (void)nawal_fail(err, errlen, "safetensors: no path given");
        return -1;
    }
    uint8_t *head;
    size_t head_len;
    if (st_encode_header(path, tensors, n, meta_kv, 1, &head, &head_len, err, errlen)) return -1;

    nawal_chunk *chunks = malloc((n + 1) * sizeof *chunks);
    if (!chunks) {
        free(head);
        return nawal_fail(err, errlen, "%s: out of memory", path);
    }
    chunks[0] = (nawal_chunk){ head, head_len };
    for (size_t i = 0; i < n; i++) chunks[i + 1] = (nawal_chunk){ tensors[i].data, tensors[i].nbytes };
    int rc = nawal_file_replace(path, chunks, n + 1, 0644, err, errlen);
    free(chunks);
    free(head);
    return rc;
}
