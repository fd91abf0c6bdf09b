/* flat_model.c - the flat order of a model's tensors (see flat_model.h). */
#include "flat_model.h"
#include "error.h"

#include <stdlib.h>

typedef struct {
    uint64_t off;
    size_t idx;
} off_idx;

/* by data offset, then header position (zero-size tensors may share an offset) */
static int cmp_off_idx(const void *a, const void *b) {
    const off_idx *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int nawal_flat_order(const nawal_st_file *f, size_t *order, uint64_t *n, char *err, size_t errlen) {
    size_t nt = nawal_st_count(f);
    uint64_t total = 0;
    for (size_t i = 0; i < nt; i++) {
        const nawal_st_tensor *t = nawal_st_at(f, i);
        total += t->nbytes / nawal_st_dtype_size(t->dtype);
    }
    if (n) *n = total;
    if (!order) return 0;
    off_idx *s = malloc((nt ? nt : 1) * sizeof *s);
    if (!s) return nawal_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < nt; i++) s[i] = (off_idx){nawal_st_data_offset(f, i), i};
    qsort(s, nt, sizeof *s, cmp_off_idx);
    for (size_t i = 0; i < nt; i++) order[i] = s[i].idx;
    free(s);
    return 0;
}
