/* train_state.c - see train_state.h: the snapshot file's format, its
 * identity hash, save and load. */
#include "train_state.h"
#include "cid.h"
#include "error.h"
#include "fileio.h"
#include "optim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAGIC "NAWALTS"  /* 8 bytes with its NUL */
#define HEADER_BYTES 112
#define SUM_BYTES 32
enum { HAS_M = 1, HAS_V = 2, HAS_KEY = 4 };

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint64_t f64_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static double bits_f64(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

int nawal_train_state_id(uint8_t id[32], const nawal_gpt *m, const int32_t *train, size_t n_train,
                         const nawal_train_config *tc, nawal_train_kind kind, const void *extra, size_t extra_len) {
    static const char domain[] = "nawal-train-state-id-v1";
    const nawal_gpt_config *c = &m->cfg;
    uint32_t ints[] = { (uint32_t)kind, (uint32_t)c->n_layer, (uint32_t)c->n_head, (uint32_t)c->n_embd,
                        (uint32_t)c->n_ctx, (uint32_t)c->vocab, (uint32_t)tc->batch, (uint32_t)tc->steps,
                        (uint32_t)tc->warmup, f32_bits(tc->lr), f32_bits(tc->min_lr), f32_bits(tc->weight_decay),
                        f32_bits(tc->beta1), f32_bits(tc->beta2), f32_bits(tc->eps), f32_bits(tc->grad_clip) };
    enum { N_INTS = sizeof ints / sizeof ints[0] };
    uint8_t fields[N_INTS * 4 + 3 * 8];
    for (size_t i = 0; i < N_INTS; i++) put32(fields + 4 * i, ints[i]);
    size_t tag_len = tc->ckpt ? tc->ckpt->tag_len : 0;
    put64(fields + N_INTS * 4, (uint64_t)m->n_params);
    put64(fields + N_INTS * 4 + 8, (uint64_t)n_train);
    put64(fields + N_INTS * 4 + 16, (uint64_t)tag_len);
    nawal_cid_state h;
    if (nawal_cid_init(&h) || nawal_cid_update(&h, domain, sizeof domain) || nawal_cid_update(&h, fields, sizeof fields) ||
        nawal_cid_update(&h, train, n_train * sizeof *train) || (extra_len && nawal_cid_update(&h, extra, extra_len)) ||
        (tag_len && nawal_cid_update(&h, tc->ckpt->tag, tag_len)))
        return -1;
    return nawal_cid_final(&h, id);
}

int nawal_train_state_save(const char *path, const nawal_gpt *m, const nawal_train_state *st, const uint8_t id[32],
                           char *err, size_t errlen) {
    size_t n = m->n_params;
    uint32_t flags = (m->opt_m ? HAS_M : 0) | (m->opt_v ? HAS_V : 0) | (st->has_noise_key ? HAS_KEY : 0);
    uint8_t head[HEADER_BYTES] = { 0 }, sum[SUM_BYTES];
    memcpy(head, MAGIC, 8);
    put32(head + 8, NAWAL_TRAIN_STATE_VERSION);
    put32(head + 12, (uint32_t)st->kind);
    memcpy(head + 16, id, 32);
    put64(head + 48, (uint64_t)n);
    put32(head + 56, (uint32_t)st->step);
    put32(head + 60, (uint32_t)st->steps);
    put32(head + 64, (uint32_t)m->opt_step);
    put32(head + 68, flags);
    put64(head + 72, st->seed);
    put64(head + 80, st->rng);
    put64(head + 88, st->has_noise_key ? st->noise_key : 0);
    put32(head + 96, f32_bits(st->first_loss));
    put32(head + 100, f32_bits(st->last_loss));
    put64(head + 104, f64_bits(st->epsilon_spent));
    float *h = malloc((n ? n : 1) * 3 * sizeof(float));
    if (!h) return nawal_fail(err, errlen, "%s: out of memory for a %zu-parameter snapshot", path, n);
    const float *bufs[3] = { m->params, m->opt_m, m->opt_v };
    nawal_chunk chunks[5] = { { head, sizeof head } };
    size_t nc = 1;
    for (int i = 0; i < 3; i++) {
        if (!bufs[i]) continue;
        m->ops->download(m->ops, h + (size_t)i * n, bufs[i], n * sizeof(float));
        chunks[nc++] = (nawal_chunk){ h + (size_t)i * n, n * sizeof(float) };
    }
    nawal_cid_state cs;
    int rc = nawal_cid_init(&cs);
    for (size_t i = 0; i < nc && rc == 0; i++) rc = nawal_cid_update(&cs, chunks[i].data, chunks[i].len);
    if (rc == 0) rc = nawal_cid_final(&cs, sum);
    if (rc) rc = nawal_fail(err, errlen, "%s: cannot hash the snapshot", path);
    chunks[nc++] = (nawal_chunk){ sum, sizeof sum };
    if (rc == 0) rc = nawal_file_replace(path, chunks, nc, 0600, err, errlen);
    free(h);
    return rc;
}

/* Reads exactly len bytes (the whole file, size already checked). */
static int read_all(FILE *f, uint8_t *buf, size_t len) { return fread(buf, 1, len, f) == len ? 0 : -1; }

int nawal_train_state_load(const char *path, nawal_gpt *m, nawal_train_state *st, const uint8_t id[32], char *err,
                           size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : nawal_fail(err, errlen, "checkpoint %s: cannot open: %s", path, strerror(errno));
    uint8_t head[HEADER_BYTES], *buf = NULL;
    size_t n = m->n_params;
    struct stat sb;
    memset(&sb, 0, sizeof sb);
    int rc = -1;
    if (fstat(fileno(f), &sb) == 0 && !S_ISREG(sb.st_mode)) {
        nawal_fail(err, errlen, "checkpoint %s: not a regular file", path);
        goto out;
    }
    if (fstat(fileno(f), &sb) || (uint64_t)sb.st_size < HEADER_BYTES || read_all(f, head, HEADER_BYTES)) {
        nawal_fail(err, errlen, "checkpoint %s: truncated (%lld bytes, shorter than its header)", path, (long long)sb.st_size);
        goto out;
    }
    if (memcmp(head, MAGIC, 8)) { nawal_fail(err, errlen, "checkpoint %s: not a nawal training checkpoint (bad magic)", path); goto out; }
    uint32_t version = get32(head + 8), flags = get32(head + 68);
    if (version != NAWAL_TRAIN_STATE_VERSION) {
        nawal_fail(err, errlen, "checkpoint %s: format version %u, this build reads version %d", path, version,
                   NAWAL_TRAIN_STATE_VERSION);
        goto out;
    }
    if (get64(head + 48) != (uint64_t)n) {
        nawal_fail(err, errlen, "checkpoint %s: for a model of %llu parameters, this one has %zu", path,
                   (unsigned long long)get64(head + 48), n);
        goto out;
    }
    size_t arrays = 1 + !!(flags & HAS_M) + !!(flags & HAS_V);
    uint64_t want = (uint64_t)HEADER_BYTES + (uint64_t)arrays * n * sizeof(float) + SUM_BYTES;
    if ((flags & ~(uint32_t)(HAS_M | HAS_V | HAS_KEY)) || (uint64_t)sb.st_size != want) {
        nawal_fail(err, errlen, "checkpoint %s: %s (%lld bytes, expected %llu)", path,
                   (uint64_t)sb.st_size < want ? "truncated" : "corrupt", (long long)sb.st_size, (unsigned long long)want);
        goto out;
    }
    size_t body = (size_t)want - HEADER_BYTES;
    uint8_t sum[SUM_BYTES];
    nawal_cid_state cs;
    if (!(buf = malloc(body))) { nawal_fail(err, errlen, "checkpoint %s: out of memory (%zu bytes)", path, body); goto out; }
    if (read_all(f, buf, body)) { nawal_fail(err, errlen, "checkpoint %s: read error", path); goto out; }
    if (nawal_cid_init(&cs) || nawal_cid_update(&cs, head, HEADER_BYTES) || nawal_cid_update(&cs, buf, body - SUM_BYTES) ||
        nawal_cid_final(&cs, sum) || !nawal_cid_equal(sum, buf + body - SUM_BYTES)) {
        nawal_fail(err, errlen, "checkpoint %s: checksum mismatch (the file is corrupt)", path);
        goto out;
    }
    nawal_train_kind kind = (nawal_train_kind)get32(head + 12);
    int step = (int)get32(head + 56), steps = (int)get32(head + 60);
    if (kind != st->kind) {
        nawal_fail(err, errlen, "checkpoint %s: of a %s run, this one is %s", path, kind == NAWAL_TRAIN_DP ? "DP-SGD" : "plain",
                   st->kind == NAWAL_TRAIN_DP ? "DP-SGD" : "plain");
        goto out;
    }
    if (!nawal_cid_equal(head + 16, id)) {
        nawal_fail(err, errlen, "checkpoint %s: belongs to another training run (model, data, training config or tag differ)", path);
        goto out;
    }
    if (steps != st->steps || step < 1 || step > steps) {
        nawal_fail(err, errlen, "checkpoint %s: step %d of %d, this run has %d steps", path, step, steps, st->steps);
        goto out;
    }
    if (nawal_gpt_optim_state_alloc(m, (flags & HAS_V) != 0)) {
        nawal_fail(err, errlen, "checkpoint %s: out of memory for the optimizer state", path);
        goto out;
    }
    float *bufs[3] = { m->params, (flags & HAS_M) ? m->opt_m : NULL, (flags & HAS_V) ? m->opt_v : NULL };
    const uint8_t *p = buf;
    for (int i = 0; i < 3; i++) {
        if (!bufs[i]) continue;
        m->ops->upload(m->ops, bufs[i], p, n * sizeof(float));
        p += n * sizeof(float);
    }
    if (!(flags & HAS_M)) m->ops->fill(m->ops, m->opt_m, 0.0f, n);
    if (!(flags & HAS_V) && m->opt_v) m->ops->fill(m->ops, m->opt_v, 0.0f, n);
    m->opt_step = (int)get32(head + 64);
    st->step = step;
    st->seed = get64(head + 72);
    st->rng = get64(head + 80);
    st->has_noise_key = (flags & HAS_KEY) != 0;
    st->noise_key = get64(head + 88);
    st->first_loss = bits_f32(get32(head + 96));
    st->last_loss = bits_f32(get32(head + 100));
    st->epsilon_spent = bits_f64(get64(head + 104));
    rc = 1;
out:
    free(buf);
    fclose(f);
    return rc;
}
