/* delta_codec.c - the compressed model delta (see delta_codec.h for the
 * frame layout and the contract).
 *
 * Encoding: the inputs are checked on the host (finite, far from overflow),
 * then the bulk passes over the n floats (x = delta + residual, top-k
 * selection) run on a nawal_ops backend, the CPU's in place or a device's
 * on staged copies; the k selected values are then quantised into the
 * payload on the host, the payload compressed with zstd, and last of all
 * the residual is updated from the payload itself (value_at, the decoder's
 * own reader), so "sent" is by construction what every decoder gets.
 *
 * Decoding: frame_open checks the header, bounds the payload size from n,
 * k and the value encoding before allocating it, decompresses and checks
 * every scale, value and index; only then does decode/accumulate write,
 * reading the payload again with the same helpers. */
#include "delta_codec.h"
#include "codec_util.h"
#include "error.h"
#include "ops.h"
#include "topk.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static const uint8_t MAGIC[4] = { 'N', 'W', 'D', 'C' };
#define MAX_ABS 1e38f             /* |delta| + |residual| bound: int8 scales and fp16 math stay finite */
#define MAX_SCALE (FLT_MAX / 128) /* an int8 scale above this could make 127 x scale infinite */

/* ---- little-endian fields (codec_util.h) ---- */
static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- fp16 ---- */
/* round to nearest even; |f| >= 65520 (which would round to infinity) saturates to 65504 */
static uint16_t f32_to_f16(float f) {
    uint32_t x = f2u(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7bffu);
    if (x < 0x38800000u) /* below 2^-14: a multiple of 2^-24 (f * 2^24 is exact, rounded by lrintf) */
        return (uint16_t)(sign | (uint32_t)lrintf(u2f(x) * 16777216.0f));
    x -= (uint32_t)(127 - 15) << 23;    /* rebias the exponent */
    x += 0xfffu + ((x >> 13) & 1u);      /* round the 13 dropped bits, ties to even */
    return (uint16_t)(sign | (x >> 13));
}
/* exact; exponent 31 (inf/NaN) never reaches here (rejected, never produced) */
static float f16_to_f32(uint16_t h) {
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v = e ? u2f((e + 112) << 23 | m << 13) : (float)m * 5.9604644775390625e-8f; /* m x 2^-24 */
    return h & 0x8000u ? -v : v;
}

/* ---- payload layout ---- */
typedef struct {
    nawal_delta_info h;
    size_t nscales;         /* int8 scales */
    const uint8_t *scales, *values, *idx, *end;
} layout;

static size_t value_bytes(nawal_delta_values v) { return v == NAWAL_DELTA_F32 ? 4 : v == NAWAL_DELTA_F16 ? 2 : 1; }

/* the part of the payload before the indices */
static size_t fixed_bytes(const nawal_delta_info *h, size_t *nscales) {
    *nscales = h->values == NAWAL_DELTA_I8 ? (size_t)((h->k + h->block - 1) / h->block) : 0;
    return *nscales * 4 + (size_t)h->k * value_bytes(h->values);
}

static void layout_set(layout *L, const nawal_delta_info *h, const uint8_t *payload, size_t len) {
    L->h = *h;
    size_t fixed = fixed_bytes(h, &L->nscales);
    L->scales = payload;
    L->values = payload + L->nscales * 4;
    L->idx = payload + fixed;
    L->end = payload + len;
}

static float scale_at(const layout *L, size_t b) { return u2f(nawal_le32_get(L->scales + 4 * b)); }

/* value j as every decoder (and the encoder's residual update) computes it */
static inline float value_at(const layout *L, size_t j) {
    size_t k = (size_t)L->h.k;
    const uint8_t *v = L->values;
    switch (L->h.values) {
    case NAWAL_DELTA_F32:
        return u2f((uint32_t)v[j] | (uint32_t)v[k + j] << 8 | (uint32_t)v[2 * k + j] << 16 | (uint32_t)v[3 * k + j] << 24);
    case NAWAL_DELTA_F16:
        return f16_to_f32((uint16_t)(v[j] | v[k + j] << 8));
    default:
        return (float)(int8_t)v[j] * scale_at(L, j / L->h.block);
    }
}

/* Walks the entries in order: cursor_next returns the model index of the
 * next entry (j itself in a dense frame). Only for payloads that
 * check_payload accepted (or the encoder wrote). */
typedef struct {
    const layout *L;
    const uint8_t *p;
    uint64_t i;
    size_t j;
} cursor;
static void cursor_start(cursor *c, const layout *L) { *c = (cursor){ L, L->idx, 0, 0 }; }
static inline size_t cursor_next(cursor *c) {
    if (c->L->h.mode == NAWAL_DELTA_DENSE) return c->j++;
    uint64_t gap = 0;
    const char *why;
    nawal_varint_get(&c->p, c->L->end, &gap, &why);
    c->i = c->j++ ? c->i + gap : gap;
    return (size_t)c->i;
}

/* ---- header ---- */
uint64_t nawal_delta_topk_count(uint64_t n, float ratio) {
    if (ratio >= 1.0f) return n;
    double k = ceil((double)ratio * (double)n);
    return k < 0 ? 0 : k > (double)n ? n : (uint64_t)k;
}

void nawal_delta_params_default(nawal_delta_params *p) {
    *p = (nawal_delta_params){ NAWAL_DELTA_DEFAULT_RATIO, NAWAL_DELTA_F16, NAWAL_DELTA_DEFAULT_BLOCK, 0 };
}

int nawal_delta_is_frame(const uint8_t *buf, size_t len) { return buf && len >= 4 && !memcmp(buf, MAGIC, 4); }

int nawal_delta_info_read(nawal_delta_info *info, const uint8_t *f, size_t len, char *err, size_t errlen) {
    if (nawal_frame_head_check(f, len, MAGIC, NAWAL_DELTA_HEADER_BYTES, NAWAL_DELTA_VERSION, "delta frame", err,
                               errlen))
        return -1;
    if (f[5] > NAWAL_DELTA_TOPK) return nawal_fail(err, errlen, "delta frame: unknown mode %u", f[5]);
    if (f[6] > NAWAL_DELTA_I8) return nawal_fail(err, errlen, "delta frame: unknown value encoding %u", f[6]);
    if (f[7]) return nawal_fail(err, errlen, "delta frame: reserved header byte is %u, not 0", f[7]);
    nawal_delta_info h = { (nawal_delta_mode)f[5], (nawal_delta_values)f[6], nawal_le64_get(f + 8), nawal_le64_get(f + 16),
                           u2f(nawal_le32_get(f + 24)), nawal_le32_get(f + 28) };
    if (h.n == 0 || h.n > NAWAL_DELTA_MAX_N)
        return nawal_fail(err, errlen, "delta frame: model length %llu out of range (1 .. %llu)", (unsigned long long)h.n,
                          (unsigned long long)NAWAL_DELTA_MAX_N);
    if (h.k > h.n)
        return nawal_fail(err, errlen, "delta frame: k = %llu entries but the model has only n = %llu",
                          (unsigned long long)h.k, (unsigned long long)h.n);
    if (!(h.ratio > 0.0f && h.ratio <= 1.0f))
        return nawal_fail(err, errlen, "delta frame: ratio %g is not in (0, 1]", (double)h.ratio);
    if (h.mode == NAWAL_DELTA_DENSE && (h.ratio != 1.0f || h.k != h.n))
        return nawal_fail(err, errlen, "delta frame: dense with ratio %g and k = %llu (must be 1 and n = %llu)",
                          (double)h.ratio, (unsigned long long)h.k, (unsigned long long)h.n);
    if (h.mode == NAWAL_DELTA_TOPK && h.ratio == 1.0f)
        return nawal_fail(err, errlen, "delta frame: top-k with ratio 1 (must be < 1; ratio 1 is dense)");
    if (h.mode == NAWAL_DELTA_TOPK && h.k != nawal_delta_topk_count(h.n, h.ratio))
        return nawal_fail(err, errlen, "delta frame: k = %llu does not match ceil(ratio %g x n %llu) = %llu",
                          (unsigned long long)h.k, (double)h.ratio, (unsigned long long)h.n,
                          (unsigned long long)nawal_delta_topk_count(h.n, h.ratio));
    if (h.values == NAWAL_DELTA_I8 && (h.block == 0 || h.block > NAWAL_DELTA_MAX_BLOCK))
        return nawal_fail(err, errlen, "delta frame: int8 block size %u out of range (1 .. %d)", h.block,
                          NAWAL_DELTA_MAX_BLOCK);
    if (h.values != NAWAL_DELTA_I8 && h.block)
        return nawal_fail(err, errlen, "delta frame: block size %u given for non-int8 values (must be 0)", h.block);
    *info = h;
    return 0;
}

static void header_put(uint8_t *f, const nawal_delta_info *h) {
    memcpy(f, MAGIC, 4);
    f[4] = NAWAL_DELTA_VERSION;
    f[5] = (uint8_t)h->mode;
    f[6] = (uint8_t)h->values;
    f[7] = 0;
    nawal_le64_put(f + 8, h->n);
    nawal_le64_put(f + 16, h->k);
    nawal_le32_put(f + 24, f2u(h->ratio));
    nawal_le32_put(f + 28, h->block);
}

/* ---- decoding ---- */
static int check_payload(const layout *L, char *err, size_t errlen) {
    size_t k = (size_t)L->h.k;
    for (size_t b = 0; b < L->nscales; b++) {
        float s = scale_at(L, b);
        if (!(s >= 0.0f && s <= MAX_SCALE) || signbit(s))
            return nawal_fail(err, errlen, "delta frame: scale %zu is %g (must be finite, >= 0 and <= %g)", b, (double)s,
                              (double)MAX_SCALE);
    }
    for (size_t j = 0; j < k; j++) {
        const uint8_t *v = L->values;
        int bad = L->h.values == NAWAL_DELTA_F32   ? (v[3 * k + j] & 0x7f) == 0x7f && (v[2 * k + j] & 0x80)
                  : L->h.values == NAWAL_DELTA_F16 ? (v[k + j] & 0x7c) == 0x7c
                                                   : v[j] == 0x80;
        if (bad) {
            if (L->h.values == NAWAL_DELTA_I8)
                return nawal_fail(err, errlen, "delta frame: int8 value %zu is -128 (must be in [-127, 127])", j);
            return nawal_fail(err, errlen, "delta frame: value %zu is infinite or NaN", j);
        }
    }
    if (L->h.mode == NAWAL_DELTA_DENSE) return 0;
    const uint8_t *p = L->idx;
    uint64_t i = 0;
    for (size_t j = 0; j < k; j++) {
        uint64_t gap;
        const char *why;
        if (nawal_varint_get(&p, L->end, &gap, &why)) return nawal_fail(err, errlen, "delta frame: index %zu %s", j, why);
        if (j && gap == 0) return nawal_fail(err, errlen, "delta frame: indices not strictly increasing at entry %zu", j);
        i = j ? i + gap : gap;
        if (i >= L->h.n)
            return nawal_fail(err, errlen, "delta frame: index %llu of entry %zu out of range (n = %llu)",
                              (unsigned long long)i, j, (unsigned long long)L->h.n);
    }
    if (p != L->end)
        return nawal_fail(err, errlen, "delta frame: %zu trailing byte(s) after the last index", (size_t)(L->end - p));
    return 0;
}

/* Checks the whole frame for a model of n values; on success *payload (to
 * free) holds the decompressed payload that L describes. */
static int frame_open(layout *L, uint8_t **payload, size_t n, const uint8_t *f, size_t len, char *err, size_t errlen) {
    *payload = NULL;
    nawal_delta_info h;
    if (nawal_delta_info_read(&h, f, len, err, errlen)) return -1;
    if (h.n != (uint64_t)n)
        return nawal_fail(err, errlen, "delta frame is for a model of %llu values, this one has %zu",
                          (unsigned long long)h.n, n);
    const uint8_t *z = f + NAWAL_DELTA_HEADER_BYTES;
    size_t zlen = len - NAWAL_DELTA_HEADER_BYTES, nscales;
    size_t lo = fixed_bytes(&h, &nscales), hi = lo, got;
    if (h.mode == NAWAL_DELTA_TOPK) {
        lo += (size_t)h.k;
        hi += (size_t)h.k * NAWAL_VARINT_MAX;
    }
    uint8_t *buf;
    if (nawal_zstd_frame_decode(z, zlen, lo, hi, h.k, "delta frame", &buf, &got, err, errlen)) return -1;
    layout_set(L, &h, buf, got);
    if (check_payload(L, err, errlen)) {
        free(buf);
        return -1;
    }
    *payload = buf;
    return 0;
}

int nawal_delta_decode(float *out, size_t n, const uint8_t *frame, size_t len, char *err, size_t errlen) {
    layout L;
    uint8_t *payload;
    if (frame_open(&L, &payload, n, frame, len, err, errlen)) return -1;
    if (L.h.mode == NAWAL_DELTA_TOPK) memset(out, 0, n * sizeof *out);
    cursor c;
    cursor_start(&c, &L);
    for (size_t j = 0; j < (size_t)L.h.k; j++) {
        size_t i = cursor_next(&c);
        out[i] = value_at(&L, j);
    }
    free(payload);
    return 0;
}

int nawal_delta_accumulate(float *acc, float *wsum, size_t n, float weight, const uint8_t *frame, size_t len,
                           char *err, size_t errlen) {
    if (!isfinite(weight)) return nawal_fail(err, errlen, "delta accumulate: weight %g is not finite", (double)weight);
    layout L;
    uint8_t *payload;
    if (frame_open(&L, &payload, n, frame, len, err, errlen)) return -1;
    cursor c;
    cursor_start(&c, &L);
    for (size_t j = 0; j < (size_t)L.h.k; j++) {
        size_t i = cursor_next(&c);
        float v = value_at(&L, j);
        acc[i] += weight * v; /* as axpy on the decoded buffer: y[i] += a * x[i] */
        if (wsum) wsum[i] += weight;
    }
    free(payload);
    return 0;
}

/* ---- encoding ---- */
/* max |v[i]| as a topk.h key (|v|'s bits): >= 0x7f800000 when some v[i] is not finite */
static uint32_t max_key(const float *v, size_t n) {
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t k = nawal_topk_key(v[i]);
        m = k > m ? k : m;
    }
    return m;
}

/* The values x[idx[j]] (x[j] when idx is NULL), j < k, quantised into the
 * payload's scales and values. */
static void quantise(const layout *L, uint8_t *payload, const float *x, const uint32_t *idx) {
    size_t k = (size_t)L->h.k;
    uint8_t *v = payload + L->nscales * 4;
    if (L->h.values == NAWAL_DELTA_I8) {
        size_t B = L->h.block;
        for (size_t b = 0; b < L->nscales; b++) {
            size_t j0 = b * B, j1 = j0 + B < k ? j0 + B : k;
            float maxabs = 0.0f;
            for (size_t j = j0; j < j1; j++) maxabs = fmaxf(maxabs, fabsf(x[idx ? idx[j] : j]));
            /* (x / scale, not x * (127 / maxabs): that reciprocal overflows for tiny blocks) */
            float scale = maxabs / 127.0f;
            nawal_le32_put(payload + 4 * b, f2u(scale));
            for (size_t j = j0; j < j1; j++) {
                float xv = x[idx ? idx[j] : j];
                long q = scale > 0.0f ? lrintf(xv / scale) : 0;
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                /* keep sent within a factor 2 of x, so x - sent is exact (Sterbenz) */
                if (2.0f * fabsf(xv) < fabsf((float)q * scale)) q = 0;
                v[j] = (uint8_t)(int8_t)q;
            }
        }
        return;
    }
    for (size_t j = 0; j < k; j++) {
        float xv = x[idx ? idx[j] : j];
        if (L->h.values == NAWAL_DELTA_F32) {
            uint32_t u = f2u(xv);
            for (int b = 0; b < 4; b++) v[(size_t)b * k + j] = (uint8_t)(u >> (8 * b));
        } else {
            uint16_t h = f32_to_f16(xv);
            v[j] = (uint8_t)h;
            v[k + j] = (uint8_t)(h >> 8);
        }
    }
}

int nawal_delta_encode(const nawal_ops *o, const nawal_delta_params *p, const float *delta, float *residual,
                       size_t n, uint8_t **frame, size_t *frame_len, char *err, size_t errlen) {
    *frame = NULL;
    *frame_len = 0;
    if (!o || !p || !delta) return nawal_fail(err, errlen, "delta encode: no backend, parameters or delta");
    if (n == 0 || (uint64_t)n > NAWAL_DELTA_MAX_N)
        return nawal_fail(err, errlen, "delta encode: model length %zu out of range (1 .. %llu)", n,
                          (unsigned long long)NAWAL_DELTA_MAX_N);
    if (!(p->ratio > 0.0f && p->ratio <= 1.0f))
        return nawal_fail(err, errlen, "delta encode: ratio %g is not in (0, 1]", (double)p->ratio);
    if ((unsigned)p->values > NAWAL_DELTA_I8)
        return nawal_fail(err, errlen, "delta encode: unknown value encoding %d", (int)p->values);
    uint32_t block = p->values != NAWAL_DELTA_I8 ? 0 : p->block ? p->block : NAWAL_DELTA_DEFAULT_BLOCK;
    if (block > NAWAL_DELTA_MAX_BLOCK)
        return nawal_fail(err, errlen, "delta encode: int8 block size %u out of range (1 .. %d)", block, NAWAL_DELTA_MAX_BLOCK);
    if (p->ratio < 1.0f && !o->topk_select)
        return nawal_fail(err, errlen, "delta encode: the %s backend has no topk_select", o->name);
    int level = p->zstd_level ? p->zstd_level : ZSTD_CLEVEL_DEFAULT;
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
        return nawal_fail(err, errlen, "delta encode: zstd level %d out of range (%d .. %d)", level, ZSTD_minCLevel(),
                          ZSTD_maxCLevel());
    nawal_delta_info h = { p->ratio < 1.0f ? NAWAL_DELTA_TOPK : NAWAL_DELTA_DENSE, p->values, n,
                           nawal_delta_topk_count(n, p->ratio), p->ratio < 1.0f ? p->ratio : 1.0f, block };
    size_t k = (size_t)h.k, nscales, fixed = fixed_bytes(&h, &nscales);
    size_t pmax = fixed + (h.mode == NAWAL_DELTA_TOPK ? k * NAWAL_VARINT_MAX : 0);
    size_t fcap = NAWAL_DELTA_HEADER_BYTES + ZSTD_compressBound(pmax);
    int host = strcmp(o->name, "cpu") == 0; /* the CPU backend's buffers are host memory */

    /* everything that can fail comes before the residual is touched */
    uint32_t *idx = h.mode == NAWAL_DELTA_TOPK ? malloc(k * sizeof *idx) : NULL;
    uint8_t *payload = malloc(pmax), *f = malloc(fcap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    float *dd = NULL, *dr = NULL;
    uint32_t *didx = NULL;
    int rc = 0;
    if ((h.mode == NAWAL_DELTA_TOPK && !idx) || !payload || !f || !cctx)
        rc = nawal_fail(err, errlen, "delta encode: out of memory (n = %zu, k = %zu)", n, k);
    if (rc == 0) { /* finite, and |delta| + |residual| far from overflow: then x is finite too */
        uint32_t md = max_key(delta, n), mr = residual ? max_key(residual, n) : 0;
        if (md >= 0x7f800000u) rc = nawal_fail(err, errlen, "delta encode: the delta has a NaN or infinite value");
        else if (mr >= 0x7f800000u) rc = nawal_fail(err, errlen, "delta encode: the residual has a NaN or infinite value");
        else if ((double)u2f(md) + (double)u2f(mr) > MAX_ABS)
            rc = nawal_fail(err, errlen, "delta encode: |delta| up to %g plus |residual| up to %g is too large for fp32",
                            (double)u2f(md), (double)u2f(mr));
    }
    if (rc == 0 && !host) { /* device backend: stage delta (and residual) in device buffers */
        dd = o->alloc(o, n * sizeof *dd);
        dr = residual ? o->alloc(o, n * sizeof *dr) : NULL;
        didx = idx ? o->alloc(o, k * sizeof *didx) : NULL;
        if (!dd || (residual && !dr) || (idx && !didx))
            rc = nawal_fail(err, errlen, "delta encode: out of %s memory for %zu floats", o->name, n);
        else {
            o->upload(o, dd, delta, n * sizeof *dd);
            if (residual) o->upload(o, dr, residual, n * sizeof *dr);
        }
    }
    const float *bd = host ? delta : dd;
    float *br = host ? residual : dr;
    if (rc == 0) {
        /* x = delta + residual, in the residual's buffer (r += 1 * d rounds once, like d + r) */
        const float *bx = bd;
        if (residual) {
            o->axpy(o, br, 1.0f, bd, n);
            bx = br;
        }
        if (idx) {
            o->topk_select(o, host ? idx : didx, bx, n, k);
            if (!host) o->download(o, idx, didx, k * sizeof *idx);
        }
        if (!host && residual) o->download(o, residual, dr, n * sizeof *residual);
        const float *x = residual ? residual : delta; /* host memory from here on */

        layout L;
        layout_set(&L, &h, payload, fixed);
        quantise(&L, payload, x, idx);
        size_t plen = fixed;
        for (size_t j = 0; idx && j < k; j++) plen += nawal_varint_put(payload + plen, j ? idx[j] - idx[j - 1] : idx[0]);
        size_t z = ZSTD_compressCCtx(cctx, f + NAWAL_DELTA_HEADER_BYTES, fcap - NAWAL_DELTA_HEADER_BYTES, payload, plen, level);
        if (ZSTD_isError(z)) rc = nawal_fail(err, errlen, "delta encode: zstd: %s", ZSTD_getErrorName(z));
        else {
            header_put(f, &h);
            *frame_len = NAWAL_DELTA_HEADER_BYTES + z;
            uint8_t *shrunk = realloc(f, *frame_len);
            *frame = shrunk ? shrunk : f;
            f = NULL;
            /* error feedback: residual = x - sent, sent read back as a decoder reads it */
            layout_set(&L, &h, payload, plen);
            cursor c;
            cursor_start(&c, &L);
            for (size_t j = 0; residual && j < k; j++) {
                size_t i = cursor_next(&c);
                residual[i] = residual[i] - value_at(&L, j);
            }
        }
    }
    if (!host) {
        if (dd) o->free(o, dd);
        if (dr) o->free(o, dr);
        if (didx) o->free(o, didx);
    }
    ZSTD_freeCCtx(cctx);
    free(f);
    free(payload);
    free(idx);
    return rc;
}
