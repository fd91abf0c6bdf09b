/* fuzz_patch.c - libFuzzer target for model patches (proto/model_patch.h),
 * whose decoder reads every patch an agent downloads.
 *
 * Each input is used twice:
 *   1. as a frame, applied to a from model of the length its header gives
 *      (or of a length taken from the input's size when that is unreadable
 *      or above 2^16), bytes i*131+7: once as it is, and once with the
 *      header's from CID replaced by that model's real CID, so that the
 *      fuzzer reaches the payload checks (it cannot forge a BLAKE2b).
 *      apply must return 0 or -1 with a message, never set its output on
 *      -1, and on success give a model of the same length whose CID is the
 *      header's to CID and that differs from the from model in at most k
 *      words;
 *   2. as material: the first half of the input is a from model, the
 *      second half (as long) a to model: make must succeed and its frame
 *      apply to give the to model exactly.
 * Seeds: tests/fuzz/corpus/patch/ (tests/fuzz/make_seeds.py). */
#include "cid.h"
#include "fuzz_util.h"
#include "model_patch.h"

#define MAX_LEN ((size_t)1 << 16)

static void apply_checked(const uint8_t *from, size_t n, const uint8_t *frame, size_t size) {
    char err[256] = "";
    uint8_t sentinel = 0, *out = &sentinel;
    size_t out_len = 12345;
    int rc = nawal_model_patch_apply(from, n, frame, size, &out, &out_len, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "apply returns 0 or -1");
    if (rc) {
        FUZZ_CHECK(err[0], "a refusal has a message");
        FUZZ_CHECK(out == &sentinel && out_len == 12345, "a refused patch sets no output");
        return;
    }
    nawal_patch_info info;
    FUZZ_CHECK(nawal_model_patch_info_read(&info, frame, size, NULL, 0) == 0 && info.file_len == n, "accepted header");
    uint8_t cid[32];
    FUZZ_CHECK(out_len == n && nawal_cid_of_buffer(cid, out, n) == 0 && nawal_cid_equal(cid, info.to_cid),
               "the result is the to model");
    uint64_t changed = 0;
    for (size_t w = 0; 4 * w < n; w++) changed += memcmp(from + 4 * w, out + 4 * w, n - 4 * w < 4 ? n - 4 * w : 4) != 0;
    FUZZ_CHECK(changed <= info.k, "at most k words changed");
    free(out);
}

static void as_frame(const uint8_t *data, size_t size) {
    nawal_patch_info info;
    size_t n = nawal_model_patch_info_read(&info, data, size, NULL, 0) == 0 && info.file_len <= MAX_LEN
                   ? (size_t)info.file_len
                   : size % 1000;
    uint8_t *from = malloc(n + 1), *copy = malloc(size + 1);
    FUZZ_CHECK(from && copy, "allocation");
    for (size_t i = 0; i < n; i++) from[i] = (uint8_t)(i * 131 + 7);
    apply_checked(from, n, data, size);
    memcpy(copy, data, size);
    if (size >= NAWAL_PATCH_HEADER_BYTES) {
        FUZZ_CHECK(nawal_cid_of_buffer(copy + 16, from, n) == 0, "hash");
        apply_checked(from, n, copy, size);
    }
    free(from);
    free(copy);
}

static void as_material(const uint8_t *data, size_t size) {
    size_t n = size / 2;
    uint8_t *frame, *out;
    size_t flen, olen;
    char err[256] = "";
    FUZZ_CHECK(nawal_model_patch_make(data, n, NULL, data + n, n, NULL, 1, &frame, &flen, err, sizeof err) == 0, err);
    FUZZ_CHECK(nawal_model_patch_apply(data, n, frame, flen, &out, &olen, err, sizeof err) == 0, err);
    FUZZ_CHECK(olen == n && (n == 0 || memcmp(out, data + n, n) == 0), "make then apply gives the to model");
    free(out);
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    as_frame(data, size);
    as_material(data, size);
    return 0;
}
