/* test_model_patch.c - model patches (proto/model_patch.h): round trips on
 * random files of awkward lengths (not multiples of 4) with changed-word
 * sets none / first / last / all / random, checked against an independent
 * byte comparison (the words listed are exactly those that differ), through
 * both the bytes and the file API; and every refusal (truncated header or
 * payload, wrong magic / version / reserved byte, from length or CID
 * mismatch, index out of range / not increasing / non-canonical varint,
 * trailing bytes, a bad pad byte, result CID mismatch), each with the
 * output file untouched. Frames to refuse are built here byte by byte (a
 * header and a zstd frame of an explicit payload). */
#include "cid.h"
#include "fileio.h"
#include "model_patch.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

static char g_dir[64];

static void setup(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/nawal_patch_XXXXXX");
    cr_assert(mkdtemp(g_dir));
}
static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(model_patch, .init = setup, .fini = teardown, .timeout = 60);

static void write_file(const char *path, const uint8_t *b, size_t n) {
    nawal_chunk c = { b, n };
    char err[256] = "";
    cr_assert_eq(nawal_file_replace(path, &c, 1, 0644, err, sizeof err), 0, "%s", err);
}

static uint8_t *read_file(const char *path, size_t *n) {
    uint8_t *b;
    char err[256] = "";
    cr_assert_eq(nawal_file_read_all(path, UINT64_MAX, &b, n, err, sizeof err), 0, "%s", err);
    return b;
}

typedef enum { CH_NONE, CH_FIRST, CH_LAST, CH_ALL, CH_RANDOM } change_set;

/* to = from with the chosen words changed (every byte of a changed word is flipped somewhere). */
static void make_pair(uint64_t *seed, size_t len, change_set set, uint8_t *from, uint8_t *to) {
    for (size_t i = 0; i < len; i++) from[i] = (uint8_t)test_rand_u64(seed);
    memcpy(to, from, len);
    size_t words = (len + 3) / 4;
    for (size_t w = 0; w < words; w++) {
        int change = set == CH_ALL || (set == CH_FIRST && w == 0) || (set == CH_LAST && w == words - 1) ||
                     (set == CH_RANDOM && test_rand_u64(seed) % 7 == 0);
        if (!change) continue;
        size_t nb = len - 4 * w < 4 ? len - 4 * w : 4;
        size_t b = (size_t)(test_rand_u64(seed) % nb); /* one byte, or all of them */
        if (test_rand_u64(seed) & 1)
            for (size_t i = 0; i < nb; i++) to[4 * w + i] ^= (uint8_t)(1 + test_rand_u64(seed) % 255);
        else to[4 * w + b] ^= (uint8_t)(1 + test_rand_u64(seed) % 255);
    }
}

/* The words that differ, compared byte by byte (independently of the codec). */
static uint64_t differing_words(const uint8_t *a, const uint8_t *b, size_t len) {
    uint64_t k = 0;
    for (size_t w = 0; w * 4 < len; w++) {
        int d = 0;
        for (size_t i = 4 * w; i < len && i < 4 * w + 4; i++) d |= a[i] != b[i];
        k += (uint64_t)d;
    }
    return k;
}

Test(model_patch, round_trips_awkward_lengths_and_change_sets) {
    uint64_t seed = test_seed("model_patch.round_trip");
    static const size_t LENS[] = { 1, 2, 3, 5, 7, 13, 1021, 4099, 100003 };
    char from_path[128], to_path[128], out_path[128], err[256] = "";
    snprintf(from_path, sizeof from_path, "%s/from", g_dir);
    snprintf(to_path, sizeof to_path, "%s/to", g_dir);
    snprintf(out_path, sizeof out_path, "%s/out", g_dir);
    for (size_t li = 0; li < sizeof LENS / sizeof *LENS; li++) {
        size_t len = LENS[li];
        for (int set = CH_NONE; set <= CH_RANDOM; set++) {
            uint8_t *from = malloc(len), *to = malloc(len);
            make_pair(&seed, len, (change_set)set, from, to);
            uint8_t *frame, *out;
            size_t flen, olen;
            cr_assert_eq(nawal_model_patch_make(from, len, NULL, to, len, NULL, 0, &frame, &flen, err, sizeof err), 0, "%s", err);
            nawal_patch_info info;
            cr_assert_eq(nawal_model_patch_info_read(&info, frame, flen, err, sizeof err), 0, "%s", err);
            cr_assert_eq(info.file_len, len);
            cr_assert_eq(info.k, differing_words(from, to, len), "len %zu set %d", len, set);
            cr_assert(set != CH_NONE || info.k == 0);
            cr_assert(set != CH_ALL || info.k == (len + 3) / 4);
            uint8_t cid[32], to_cid[32];
            nawal_cid_of_buffer(cid, from, len);
            cr_assert(nawal_cid_equal(cid, info.from_cid));
            nawal_cid_of_buffer(to_cid, to, len);
            cr_assert(nawal_cid_equal(to_cid, info.to_cid));
            cr_assert_eq(nawal_model_patch_apply(from, len, frame, flen, &out, &olen, err, sizeof err), 0,
                         "len %zu set %d: %s", len, set, err);
            cr_assert(olen == len && !memcmp(out, to, len), "len %zu set %d: bytes differ", len, set);
            free(out);
            /* the file forms: made from files (with the CIDs given, as the coordinator does), applied
             * in place of the from file */
            write_file(from_path, from, len);
            write_file(to_path, to, len);
            uint8_t *frame2;
            size_t flen2;
            cr_assert_eq(nawal_model_patch_make_files(from_path, cid, to_path, to_cid, 0, &frame2, &flen2, err, sizeof err), 0,
                         "%s", err);
            cr_assert(flen2 == flen && !memcmp(frame, frame2, flen), "the file form with known CIDs makes the same frame");
            cr_assert_eq(nawal_model_patch_apply_file(from_path, frame, flen, out_path, err, sizeof err), 0, "%s", err);
            out = read_file(out_path, &olen);
            cr_assert(olen == len && !memcmp(out, to, len));
            free(out);
            free(frame);
            free(frame2);
            free(from);
            free(to);
        }
    }
}

/* ---- refusals ---- */

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A frame with the given header fields and payload (zstd level 1), *len bytes. */
static uint8_t *frame_of(uint64_t file_len, const uint8_t from[32], const uint8_t to[32], uint64_t k, const uint8_t *payload,
                         size_t plen, size_t *len) {
    size_t cap = NAWAL_PATCH_HEADER_BYTES + ZSTD_compressBound(plen) + 16;
    uint8_t *f = calloc(1, cap);
    memcpy(f, "NWMP", 4);
    f[4] = NAWAL_PATCH_VERSION;
    put64(f + 8, file_len);
    memcpy(f + 16, from, 32);
    memcpy(f + 48, to, 32);
    put64(f + 80, k);
    size_t z = ZSTD_compress(f + NAWAL_PATCH_HEADER_BYTES, cap - NAWAL_PATCH_HEADER_BYTES, payload, plen, 1);
    cr_assert(!ZSTD_isError(z));
    *len = NAWAL_PATCH_HEADER_BYTES + z;
    return f;
}

typedef struct {
    uint8_t from[10], to[10]; /* 10 bytes: words 0, 1 and a partial word 2 */
    uint8_t from_cid[32], to_cid[32];
    char from_path[128], out_path[128];
} fixture;

static void fixture_make(fixture *x) {
    for (int i = 0; i < 10; i++) x->from[i] = x->to[i] = (uint8_t)(i * 17 + 3);
    x->to[5] ^= 0x40; /* word 1 */
    x->to[9] ^= 0x01; /* partial word 2 */
    nawal_cid_of_buffer(x->from_cid, x->from, 10);
    nawal_cid_of_buffer(x->to_cid, x->to, 10);
    snprintf(x->from_path, sizeof x->from_path, "%s/from", g_dir);
    snprintf(x->out_path, sizeof x->out_path, "%s/out", g_dir);
    write_file(x->from_path, x->from, 10);
    write_file(x->out_path, (const uint8_t *)"untouched", 9);
}

/* The good payload: indices 1, 2 (gaps 1, 1) and the two words as planes. */
static size_t good_payload(const fixture *x, uint8_t *p) {
    p[0] = 1, p[1] = 1;
    for (int b = 0; b < 4; b++) {
        p[2 + 2 * b] = x->to[4 + b];
        p[2 + 2 * b + 1] = b < 2 ? x->to[8 + b] : 0;
    }
    return 10;
}

/* frame must be refused by both APIs with want in the message, the output file untouched. */
static void expect_refused(const fixture *x, const uint8_t *frame, size_t len, const char *want, const char *what) {
    char err[256] = "";
    uint8_t *out = (uint8_t *)"sentinel";
    size_t olen = 77;
    cr_assert_eq(nawal_model_patch_apply(x->from, 10, frame, len, &out, &olen, err, sizeof err), -1, "%s: accepted", what);
    cr_assert(!strcmp((char *)out, "sentinel") && olen == 77, "%s: output written", what);
    cr_assert(strstr(err, want), "%s: says \"%s\", expected \"%s\"", what, err, want);
    err[0] = 0;
    cr_assert_eq(nawal_model_patch_apply_file(x->from_path, frame, len, x->out_path, err, sizeof err), -1, "%s", what);
    cr_assert(err[0], "%s: no message", what);
    size_t n;
    uint8_t *b = read_file(x->out_path, &n);
    cr_assert(n == 9 && !memcmp(b, "untouched", 9), "%s: output file changed", what);
    free(b);
}

Test(model_patch, refusals_leave_the_output_untouched) {
    fixture x;
    fixture_make(&x);
    uint8_t p[64];
    size_t plen = good_payload(&x, p), len;
    uint8_t *f = frame_of(10, x.from_cid, x.to_cid, 2, p, plen, &len);
    size_t flen = len;
    /* the good frame applies (and equals what make gives) */
    uint8_t *out, *made;
    size_t olen, mlen;
    char err[256] = "";
    cr_assert_eq(nawal_model_patch_apply(x.from, 10, f, len, &out, &olen, err, sizeof err), 0, "%s", err);
    cr_assert(olen == 10 && !memcmp(out, x.to, 10));
    free(out);
    cr_assert_eq(nawal_model_patch_make(x.from, 10, NULL, x.to, 10, NULL, 1, &made, &mlen, err, sizeof err), 0, "%s", err);
    cr_assert(mlen == len && !memcmp(made, f, len));
    free(made);
    cr_assert_eq(nawal_model_patch_make(x.from, 10, NULL, x.to, 9, NULL, 0, &made, &mlen, err, sizeof err), -1);
    cr_assert(strstr(err, "differ in length"), "%s", err);

    uint8_t *g = malloc(len + 8);
    /* header */
    expect_refused(&x, f, NAWAL_PATCH_HEADER_BYTES - 1, "truncated", "truncated header");
    expect_refused(&x, f, len - 1, "zstd", "truncated payload");
    memcpy(g, f, len), g[0] = 'X';
    expect_refused(&x, g, len, "bad magic", "magic");
    memcpy(g, f, len), g[4] = 2;
    expect_refused(&x, g, len, "version 2", "version");
    memcpy(g, f, len), g[6] = 1;
    expect_refused(&x, g, len, "reserved", "reserved byte");
    memcpy(g, f, len), put64(g + 80, 4);
    expect_refused(&x, g, len, "only 3", "k above the words");
    memcpy(g, f, len), put64(g + 80, 1);
    expect_refused(&x, g, len, "payload of 10 bytes, expected 5 .. 5", "payload size not implied by k");
    memcpy(g, f, len), g[len] = 0;
    expect_refused(&x, g, len + 1, "trailing", "trailing bytes");
    /* from model */
    uint8_t *h = frame_of(12, x.from_cid, x.to_cid, 2, p, plen, &len);
    expect_refused(&x, h, len, "12 bytes", "from length");
    free(h);
    uint8_t other[32];
    memcpy(other, x.from_cid, 32), other[0] ^= 1;
    h = frame_of(10, other, x.to_cid, 2, p, plen, &len);
    expect_refused(&x, h, len, "applies to model", "from CID");
    free(h);
    h = frame_of(10, x.from_cid, other, 2, p, plen, &len);
    expect_refused(&x, h, len, "not the patch's target", "result CID");
    free(h);
    /* indices */
    uint8_t q[64];
    memcpy(q, p, plen), q[1] = 2; /* 1, 3 */
    h = frame_of(10, x.from_cid, x.to_cid, 2, q, plen, &len);
    expect_refused(&x, h, len, "out of range", "index out of range");
    free(h);
    memcpy(q, p, plen), q[1] = 0; /* 1, 1 */
    h = frame_of(10, x.from_cid, x.to_cid, 2, q, plen, &len);
    expect_refused(&x, h, len, "not strictly increasing", "index repeated");
    free(h);
    {   /* a file of >= 129 words, so that the size bound leaves room for one longer varint */
        uint8_t big[1000] = { 0 }, bcid[32];
        nawal_cid_of_buffer(bcid, big, sizeof big);
        static const struct { uint8_t r[6]; const char *want; } C[] = {
            { { 0x81, 0x00, 1, 2, 3, 4 }, "shortest form" },    /* index 1 as two bytes */
            { { 1, 1, 2, 3, 4, 0 }, "after the indices" },      /* a byte left over */
        };
        for (size_t i = 0; i < 2; i++) {
            h = frame_of(sizeof big, bcid, bcid, 1, C[i].r, 6, &len);
            cr_assert_eq(nawal_model_patch_apply(big, sizeof big, h, len, &out, &olen, err, sizeof err), -1);
            cr_assert(strstr(err, C[i].want), "%s", err);
            free(h);
        }
    }
    memcpy(q, p, plen), q[2 + 2 * 3 + 1] = 7; /* byte 3 of the partial word */
    h = frame_of(10, x.from_cid, x.to_cid, 2, q, plen, &len);
    expect_refused(&x, h, len, "partial word", "pad byte");
    free(h);
    /* the good frame on a from file of another length or content */
    write_file(x.from_path, x.from, 9);
    cr_assert_eq(nawal_model_patch_apply_file(x.from_path, f, flen, x.out_path, err, sizeof err), -1);
    cr_assert(strstr(err, "bytes"), "%s", err);
    uint8_t changed[10];
    memcpy(changed, x.from, 10), changed[0] ^= 1;
    write_file(x.from_path, changed, 10);
    cr_assert_eq(nawal_model_patch_apply_file(x.from_path, f, flen, x.out_path, err, sizeof err), -1);
    cr_assert(strstr(err, "applies to model"), "%s", err);
    size_t n;
    uint8_t *b = read_file(x.out_path, &n);
    cr_assert(n == 9 && !memcmp(b, "untouched", 9), "output file changed");
    free(b);
    free(g);
    free(f);
}
