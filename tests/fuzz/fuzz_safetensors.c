/* fuzz_safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Input: the bytes of a (candidate) .safetensors file. It goes through
 * nawal_st_parse() (from memory) and nawal_st_read() (from a file, the path
 * that may adopt its read buffer instead of copying): both must agree on
 * success or failure and on every tensor and metadata entry. On success the
 * properties safetensors.h promises are checked: names unique (nawal_st_find
 * returns the same entry), 0 <= ndim <= 4 with unused shape entries 0,
 * nbytes = element count * 4, data non-NULL and 4-byte aligned, every data
 * byte readable (ASan checks that). Bad input must only produce
 * -1 with a message. Seeds: tests/fuzz/corpus/safetensors/. */
#include "fuzz_util.h"
#include "safetensors.h"

static void check_file(const nawal_st_file *f) {
    size_t n = nawal_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const nawal_st_tensor *t = nawal_st_at(f, i);
        /* the reader, like the writer, refuses empty names */
        FUZZ_CHECK(t && t->name && t->name[0], "tensor has a non-empty name");
        FUZZ_CHECK(strcmp(t->name, "__metadata__") != 0, "metadata is not a tensor");
        FUZZ_CHECK(nawal_st_find(f, t->name) == t, "find returns the listed tensor");
        FUZZ_CHECK(nawal_st_dtype_name(t->dtype) != NULL, "known dtype");
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= NAWAL_ST_MAX_DIMS, "rank in range");
        uint64_t count = 1;
        int overflow = 0;
        for (int d = 0; d < NAWAL_ST_MAX_DIMS; d++) {
            if (d >= t->ndim) {
                FUZZ_CHECK(t->shape[d] == 0, "shape entries past ndim are 0");
                continue;
            }
            FUZZ_CHECK(t->shape[d] >= 0, "dimension not negative");
            overflow |= __builtin_mul_overflow(count, (uint64_t)t->shape[d], &count);
        }
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] == 0) count = 0, overflow = 0;
        FUZZ_CHECK(!overflow && count <= SIZE_MAX / 4, "element count fits");
        FUZZ_CHECK(t->nbytes == count * nawal_st_dtype_size(t->dtype), "nbytes = count * size");
        FUZZ_CHECK(t->data != NULL && (uintptr_t)t->data % 4 == 0, "data non-NULL and aligned");
        const volatile uint8_t *p = t->data;
        uint8_t acc = 0;
        for (size_t k = 0; k < t->nbytes; k++) acc ^= p[k];
        (void)acc;
    }
    FUZZ_CHECK(nawal_st_at(f, n) == NULL, "at() past the end is NULL");
    size_t nm = nawal_st_metadata_count(f);
    for (size_t i = 0; i < nm; i++) {
        const char *k = NULL, *v = NULL;
        FUZZ_CHECK(nawal_st_metadata_at(f, i, &k, &v) == 0 && k && v, "metadata entry");
        const char *v2 = nawal_st_metadata(f, k);
        FUZZ_CHECK(v2 && strcmp(v, v2) == 0, "metadata lookup by key");
    }
    FUZZ_CHECK(nawal_st_metadata_at(f, nm, NULL, NULL) == -1, "metadata_at past the end");
}

static void check_same(const nawal_st_file *a, const nawal_st_file *b) {
    FUZZ_CHECK(nawal_st_count(a) == nawal_st_count(b), "parse and read: same tensor count");
    for (size_t i = 0; i < nawal_st_count(a); i++) {
        const nawal_st_tensor *x = nawal_st_at(a, i), *y = nawal_st_at(b, i);
        FUZZ_CHECK(strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->ndim == y->ndim &&
                       memcmp(x->shape, y->shape, sizeof x->shape) == 0 && x->nbytes == y->nbytes,
                   "parse and read: same tensor");
        FUZZ_CHECK(memcmp(x->data, y->data, x->nbytes) == 0, "parse and read: same data");
    }
    FUZZ_CHECK(nawal_st_metadata_count(a) == nawal_st_metadata_count(b), "same metadata count");
    for (size_t i = 0; i < nawal_st_metadata_count(a); i++) {
        const char *ka, *va, *kb, *vb;
        nawal_st_metadata_at(a, i, &ka, &va);
        nawal_st_metadata_at(b, i, &kb, &vb);
        FUZZ_CHECK(strcmp(ka, kb) == 0 && strcmp(va, vb) == 0, "same metadata entry");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err1[512] = "", err2[512] = "";
    nawal_st_file *a = NULL, *b = NULL;
    int ra = nawal_st_parse(&a, data, size, "fuzz", err1, sizeof err1);
    FUZZ_CHECK(ra == 0 || ra == -1, "parse returns 0 or -1");
    FUZZ_CHECK(ra == 0 ? a != NULL : a == NULL && err1[0], "parse: result or message");
    if (ra == 0) check_file(a);

    const char *path = fuzz_memfile("input.safetensors", data, size);
    int rb = nawal_st_read(&b, path, err2, sizeof err2);
    FUZZ_CHECK(rb == ra, "parse and read agree on success");
    FUZZ_CHECK(rb == 0 ? b != NULL : b == NULL && err2[0], "read: result or message");
    if (ra == 0 && rb == 0) {
        check_file(b);
        check_same(a, b);
    }
    nawal_st_free(a);
    nawal_st_free(b);
    return 0;
}
