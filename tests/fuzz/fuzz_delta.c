/* fuzz_delta.c - libFuzzer target for the delta codec (proto/delta_codec.h),
 * whose decoder reads every update a coordinator is sent.
 *
 * Each input is used twice:
 *   1. as a frame, decoded for a model of the length its header gives (or
 *      of a length taken from the input's size when that is unreadable or
 *      above 2^16, so that mismatches are exercised too): decode and
 *      accumulate must return 0 or -1 with a message, never write their
 *      output on -1, agree on the verdict, and on success give finite
 *      values, at most k of them non-zero, with accumulate equal to
 *      decode then y += w x, bit for bit;
 *   2. as encoder material: byte 0 picks the value encoding and the ratio,
 *      byte 1 the int8 block size, the rest are floats, the first half the
 *      delta, the second the residual (non-finite ones become 0, large ones
 *      are clamped to +-1e4): encoding must succeed, and its frame decode to
 *      values that satisfy the error-feedback identity exactly:
 *      residual' == (delta + residual) - sent and sent + residual' ==
 *      delta + residual, with sent non-zero in at most k entries.
 * Seeds: tests/fuzz/corpus/delta/ (tests/fuzz/make_seeds.py). */
#include "delta_codec.h"
#include "fuzz_util.h"
#include "ops.h"

#include <math.h>

#define MAX_N ((size_t)1 << 16)

static float *fbuf(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    FUZZ_CHECK(p != NULL, "allocation");
    return p;
}

static void as_frame(const uint8_t *data, size_t size) {
    nawal_delta_info info;
    char err[256] = "", err2[256] = "";
    size_t n = nawal_delta_info_read(&info, data, size, NULL, 0) == 0 && info.n <= MAX_N ? (size_t)info.n
                                                                                         : size % 1000 + 1;
    float *out = fbuf(n), *acc = fbuf(n), *ref = fbuf(n), *ws = fbuf(n);
    for (size_t i = 0; i < n; i++) out[i] = acc[i] = ref[i] = (float)i * 0.5f - 3.0f;
    memset(ws, 0, n * sizeof *ws);
    int rd = nawal_delta_decode(out, n, data, size, err, sizeof err);
    int ra = nawal_delta_accumulate(acc, ws, n, 0.75f, data, size, err2, sizeof err2);
    size_t counted = 0;
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ws[i] == 0.0f || ws[i] == 0.75f, "per-entry weight sums are 0 or the weight");
        counted += ws[i] != 0.0f;
    }
    FUZZ_CHECK(rd == 0 || counted == 0, "a refused frame leaves the weight sums untouched");
    FUZZ_CHECK(rd != 0 || nawal_delta_info_read(&info, data, size, NULL, 0) || counted == info.k,
               "every entry sent is counted once");
    FUZZ_CHECK(rd == 0 || rd == -1, "decode returns 0 or -1");
    FUZZ_CHECK(ra == rd, "decode and accumulate agree");
    if (rd) {
        FUZZ_CHECK(err[0] && err2[0], "refusals have a message");
        FUZZ_CHECK(memcmp(out, ref, n * sizeof *out) == 0, "a refused frame leaves the output untouched");
        FUZZ_CHECK(memcmp(acc, ref, n * sizeof *acc) == 0, "a refused frame leaves the accumulator untouched");
    } else {
        FUZZ_CHECK(nawal_delta_info_read(&info, data, size, NULL, 0) == 0 && info.n == n, "accepted header");
        size_t nonzero = 0;
        for (size_t i = 0; i < n; i++) {
            FUZZ_CHECK(isfinite(out[i]), "decoded values are finite");
            nonzero += out[i] != 0.0f;
            float y = ref[i];
            y += 0.75f * out[i];
            FUZZ_CHECK(memcmp(&y, &acc[i], sizeof y) == 0 || (y == 0.0f && acc[i] == 0.0f),
                       "accumulate = decode then axpy");
        }
        FUZZ_CHECK(nonzero <= info.k, "at most k entries sent");
    }
    free(out);
    free(acc);
    free(ref);
    free(ws);
}

static float sane(const uint8_t *p) {
    float v;
    memcpy(&v, p, sizeof v);
    if (!isfinite(v)) return 0.0f;
    return v > 1e4f ? 1e4f : v < -1e4f ? -1e4f : v;
}

static void as_material(const uint8_t *data, size_t size) {
    static const nawal_ops *o;
    if (!o) o = nawal_ops_cpu(1);
    if (size < 2 + 8) return;
    size_t n = (size - 2) / 8;
    nawal_delta_params p = { (float)(data[0] / 3 % 50 + 1) / 50.0f, (nawal_delta_values)(data[0] % 3), data[1] + 1u, 1 };
    float *d = fbuf(n), *r = fbuf(n), *x = fbuf(n), *dec = fbuf(n);
    for (size_t i = 0; i < n; i++) {
        d[i] = sane(data + 2 + 4 * i);
        r[i] = sane(data + 2 + 4 * (n + i));
        x[i] = d[i] + r[i];
    }
    uint8_t *f = NULL;
    size_t len = 0;
    char err[256] = "";
    int rc = nawal_delta_encode(o, &p, d, r, n, &f, &len, err, sizeof err);
    FUZZ_CHECK(rc == 0 && f != NULL, "encoding finite, bounded input succeeds");
    FUZZ_CHECK(nawal_delta_decode(dec, n, f, len, err, sizeof err) == 0, "an encoded frame decodes");
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        float want = x[i] - dec[i];
        FUZZ_CHECK(memcmp(&r[i], &want, sizeof want) == 0, "residual = (delta + residual) - sent");
        FUZZ_CHECK(dec[i] + r[i] == x[i], "sent + residual = delta + residual");
        nonzero += dec[i] != 0.0f;
    }
    FUZZ_CHECK(nonzero <= nawal_delta_topk_count(n, p.ratio), "at most k entries sent");
    free(f);
    free(d);
    free(r);
    free(x);
    free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    as_frame(data, size);
    as_material(data, size);
    return 0;
}
