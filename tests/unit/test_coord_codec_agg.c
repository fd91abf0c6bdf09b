/* test_coord_codec_agg.c - FedAvg over codec-compressed deltas
 * (delta_codec.h frames over the flat model, flat_model.h) mixed with
 * dense safetensors deltas: the result against a weighted mean in double
 * recomputed here from the frames decoded with nawal_delta_decode, within
 * aggregate.h's bound, and the same bytes for any thread count and
 * chunking; frames with the wrong n, truncated (header or payload), or
 * holding a NaN rejected with the codec's reason while the round keeps
 * the good updates, exactly as if the bad ones had never been sent; the
 * flat order (by data offset, not header order); and the round driver
 * (nawal_round_aggregate) on a store holding both kinds of blob; and
 * fedavg-sparse (each entry averaged over the updates that send it). */
#include "agg_test_util.h"
#include "coord_test_util.h"
#include "delta_codec.h"
#include "flat_model.h"
#include "ops.h"

#include <zstd.h>

static char g_root[128];

static void setup(void) { coord_make_root(g_root, sizeof g_root, "cagg"); }
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_codec_agg, .init = setup, .fini = teardown, .timeout = 120);

/* how update i is sent */
typedef enum { K_DENSE_ST, K_TOPK_F16, K_TOPK_I8, K_TOPK_F32, K_DENSE_F16, K_KINDS } kind;
static const char *const kind_name[] = {"safetensors", "top-k fp16", "top-k int8", "top-k fp32", "dense-frame fp16"};

static void write_frame(const char *path, float *d, kind k, uint64_t *seed) {
    agg_write_frame(path, d, k == K_DENSE_F16 ? 1.0f : 0.05f,
                    k == K_TOPK_I8 ? NAWAL_DELTA_I8 : k == K_TOPK_F32 ? NAWAL_DELTA_F32 : NAWAL_DELTA_F16, seed);
}

/* A dense fp32 frame built by hand (the encoder refuses NaN): values v. */
static void write_raw_dense_frame(const char *path, const float *v, size_t n) {
    uint8_t *pl = malloc(4 * n);
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &v[j], 4);
        for (int b = 0; b < 4; b++) pl[(size_t)b * n + j] = (uint8_t)(u >> (8 * b));
    }
    size_t cap = ZSTD_compressBound(4 * n);
    uint8_t *fr = calloc(1, NAWAL_DELTA_HEADER_BYTES + cap);
    memcpy(fr, "NWDC", 4);
    fr[4] = NAWAL_DELTA_VERSION;
    fr[5] = NAWAL_DELTA_DENSE;
    fr[6] = NAWAL_DELTA_F32;
    for (int b = 0; b < 8; b++) fr[8 + b] = fr[16 + b] = (uint8_t)((uint64_t)n >> (8 * b));
    float one = 1.0f;
    memcpy(fr + 24, &one, 4);
    size_t z = ZSTD_compress(fr + NAWAL_DELTA_HEADER_BYTES, cap, pl, 4 * n, 3);
    cr_assert(!ZSTD_isError(z));
    agg_write_bytes(path, fr, NAWAL_DELTA_HEADER_BYTES + z);
    free(fr);
    free(pl);
}

typedef agg_fixture fixture; /* kinds[i]: a kind */

/* k updates of random kinds (each kind at least once when k >= K_KINDS) */
static void fixture_make(fixture *f, uint64_t *seed, size_t k) {
    agg_fixture_make(f, seed, k, g_root);
    for (size_t i = 0; i < k; i++) {
        f->kinds[i] = i < K_KINDS ? (kind)i : (kind)(test_rand_u64(seed) % K_KINDS);
        snprintf(f->paths[i], sizeof f->paths[i], "%s/update%zu", g_root, i);
        if (f->kinds[i] == K_DENSE_ST) agg_write(f->paths[i], f->d[i], AGG_OK);
        else write_frame(f->paths[i], f->d[i], (kind)f->kinds[i], seed);
    }
}

static void fixture_free(fixture *f) { agg_fixture_free(f); }

Test(coord_codec_agg, mixed_dense_and_frames_match_reference) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    for (int trial = 0; trial < 4; trial++) {
        size_t k = K_KINDS + test_rand_u64(&seed) % 6;
        fixture f;
        fixture_make(&f, &seed, k);
        char (*reasons)[NAWAL_AGG_REASON_BYTES] = calloc(k, NAWAL_AGG_REASON_BYTES);
        nawal_fedavg_options o = {1 + (int)(test_rand_u64(&seed) % 2), test_rand_u64(&seed) % 2 ? 0 : 1 + test_rand_u64(&seed) % 5000, 0, 0};
        agg_membuf out, out2;
        cr_assert_eq(agg_run_fedavg(&o, f.base_path, f.paths, f.w, k, &out, reasons), 0);
        for (size_t i = 0; i < k; i++)
            cr_assert_str_empty(reasons[i], "update %zu (%s) rejected: %s", i, kind_name[f.kinds[i]], reasons[i]);
        float *got = agg_parse(&out);
        double *want = agg_reference(f.base, f.d, f.w, NULL, k);
        agg_check_close(got, want, f.base, f.d, NULL, k, seed0);
        /* same bytes whatever the thread count, chunking and read mode */
        nawal_fedavg_options o2 = {3 - o.threads, 777, 1, 0};
        cr_assert_eq(agg_run_fedavg(&o2, f.base_path, f.paths, f.w, k, &out2, reasons), 0);
        cr_assert(out.len == out2.len && memcmp(out.p, out2.p, out.len) == 0, "depends on threads (seed %llu)",
                  (unsigned long long)seed0);
        free(out.p);
        free(out2.p);
        free(got);
        free(want);
        free(reasons);
        fixture_free(&f);
    }
}

/* sent[0..n) = 1 for each entry the frame at path sends, read here from
 * its bytes (header, zstd payload, the index varints after the scales and
 * values: delta_codec.h's layout), independently of the decoder. */
static void frame_sent(const char *path, size_t n, unsigned char *sent) {
    FILE *fp = fopen(path, "rb");
    cr_assert(fp, "%s", path);
    static uint8_t fr[1 << 22];
    size_t len = fread(fr, 1, sizeof fr, fp);
    fclose(fp);
    cr_assert(len > NAWAL_DELTA_HEADER_BYTES && len < sizeof fr);
    uint64_t k = 0, block = 0;
    for (int b = 7; b >= 0; b--) k = k << 8 | fr[16 + b];
    for (int b = 3; b >= 0; b--) block = block << 8 | fr[28 + b];
    memset(sent, fr[5] == NAWAL_DELTA_DENSE, n);
    if (fr[5] == NAWAL_DELTA_DENSE) return;
    unsigned long long cap = ZSTD_getFrameContentSize(fr + NAWAL_DELTA_HEADER_BYTES, len - NAWAL_DELTA_HEADER_BYTES);
    uint8_t *pl = malloc(cap);
    cr_assert(pl && ZSTD_decompress(pl, cap, fr + NAWAL_DELTA_HEADER_BYTES, len - NAWAL_DELTA_HEADER_BYTES) == cap);
    size_t vb = fr[6] == NAWAL_DELTA_F32 ? 4 : fr[6] == NAWAL_DELTA_F16 ? 2 : 1;
    size_t pos = (fr[6] == NAWAL_DELTA_I8 ? 4 * ((k + block - 1) / block) : 0) + vb * k;
    uint64_t idx = 0;
    for (uint64_t j = 0; j < k; j++) {
        uint64_t v = 0;
        for (int sh = 0; pos < cap; sh += 7) {
            uint8_t byte = pl[pos++];
            v |= (uint64_t)(byte & 0x7f) << sh;
            if (!(byte & 0x80)) break;
        }
        idx = j ? idx + v : v;
        cr_assert(idx < n);
        sent[idx] = 1;
    }
    free(pl);
}

/* fedavg-sparse: each entry is the weighted mean over the updates that
 * send it (dense updates send all; a frame the entries it holds, read by
 * frame_sent), recomputed in double; with dense updates only it is FedAvg
 * bit for bit. */
Test(coord_codec_agg, sparse_mean_is_per_entry_mean_over_senders) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    size_t n = agg_total();
    for (int trial = 0; trial < 3; trial++) {
        size_t k = K_KINDS + test_rand_u64(&seed) % 4;
        fixture f;
        fixture_make(&f, &seed, k);
        nawal_fedavg_options o = {1 + (int)(test_rand_u64(&seed) % 2), 0, 0, 1};
        agg_membuf out;
        char (*reasons)[NAWAL_AGG_REASON_BYTES] = calloc(k, NAWAL_AGG_REASON_BYTES);
        cr_assert_eq(agg_run_fedavg(&o, f.base_path, f.paths, f.w, k, &out, reasons), 0);
        float *got = agg_parse(&out);
        double W = 0, M = 0, u = ldexp(1.0, -24);
        for (size_t i = 0; i < k; i++) W += (double)f.w[i];
        for (size_t i = 0; i < k; i++)
            for (size_t e = 0; e < n; e++) M = fmax(M, fabs(f.d[i][e]));
        unsigned char *sent = malloc(k * n);
        for (size_t i = 0; i < k; i++) {
            if (f.kinds[i] == K_DENSE_ST) memset(sent + i * n, 1, n);
            else frame_sent(f.paths[i], n, sent + i * n);
        }
        size_t sparse_seen = 0;
        for (size_t e = 0; e < n; e++) {
            double num = 0, den = 0;
            size_t senders = 0;
            for (size_t i = 0; i < k; i++) {
                if (!sent[i * n + e]) continue;
                num += (double)f.w[i] / W * f.d[i][e];
                den += (double)f.w[i] / W;
                senders++;
            }
            double want = f.base[e] + (den > 0 ? num / den : 0.0);
            sparse_seen += senders < k;
            double bound = (2.0 * k + 6.0) * u * (M + fabs(f.base[e]));
            cr_assert(fabs(got[e] - want) <= bound, "element %zu: got %.9g want %.9g (bound %.3g, seed %llu)", e,
                      (double)got[e], want, bound, (unsigned long long)seed0);
        }
        cr_assert_gt(sparse_seen, n / 2, "most entries are sent by some updates only");
        free(sent);
        free(got);
        free(out.p);
        free(reasons);
        fixture_free(&f);
    }
    /* dense updates only: FedAvg exactly */
    fixture f;
    fixture_make(&f, &seed, 1);
    char p2[2][256];
    uint64_t w2[2] = {3, 5};
    memcpy(p2[0], f.paths[0], 256);
    snprintf(p2[1], sizeof p2[1], "%s/update_dense2", g_root);
    agg_write(p2[1], f.base, AGG_OK);
    nawal_fedavg_options plain = {1, 0, 0, 0}, sparse = {1, 0, 0, 1};
    agg_membuf a, b;
    cr_assert_eq(agg_run_fedavg(&plain, f.base_path, p2, w2, 2, &a, NULL), 0);
    cr_assert_eq(agg_run_fedavg(&sparse, f.base_path, p2, w2, 2, &b, NULL), 0);
    cr_assert(a.len == b.len && memcmp(a.p, b.p, a.len) == 0, "fedavg-sparse differs from fedavg on dense updates");
    free(a.p);
    free(b.p);
    fixture_free(&f);
}

Test(coord_codec_agg, frames_only_one_update_is_base_plus_decoded) {
    uint64_t seed = fresh_seed();
    size_t n = agg_total();
    fixture f;
    fixture_make(&f, &seed, 2); /* a safetensors delta and a top-k fp16 frame */
    char reasons[1][NAWAL_AGG_REASON_BYTES];
    agg_membuf out;
    cr_assert_eq(agg_run_fedavg(NULL, f.base_path, f.paths + 1, f.w + 1, 1, &out, reasons), 0, "%s", reasons[0]);
    float *got = agg_parse(&out);
    for (size_t e = 0; e < n; e++)
        cr_assert_eq(got[e], f.base[e] + f.d[1][e], "element %zu (seed %llu)", e, (unsigned long long)seed);
    free(got);
    free(out.p);
    fixture_free(&f);
}

/* Bad frames (wrong n, truncated header, truncated payload, a NaN) and a
 * weight-0 frame are rejected with the codec's reason; the rest
 * aggregate bit for bit as if the bad ones had never been sent. */
Test(coord_codec_agg, bad_frames_rejected_rest_aggregated) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    const size_t k = 11, n = agg_total();
    fixture f;
    fixture_make(&f, &seed, k);
    const struct { int what; const char *want; } bad[] = {
        {0, "model of"},          /* n = agg_total() - 1 */
        {1, "truncated"},         /* 20 bytes: half a header */
        {2, "zstd"},              /* the zstd frame cut short */
        {3, "infinite or NaN"},   /* a NaN value */
        {4, "no examples"},       /* weight 0 */
    };
    const size_t nb = sizeof bad / sizeof *bad;
    int use[11];
    for (size_t i = 0; i < k; i++) use[i] = 1;
    size_t pos[5];
    float *v = malloc(n * 4);
    char err[512] = "";
    for (size_t b = 0; b < nb; b++) {
        size_t p;
        do p = test_rand_u64(&seed) % k; while (!use[p]);
        use[p] = 0;
        pos[b] = p;
        memcpy(v, f.d[p], n * 4);
        nawal_delta_params prm;
        nawal_delta_params_default(&prm);
        uint8_t *fr;
        size_t len;
        switch (bad[b].what) {
        case 0:
            cr_assert_eq(nawal_delta_encode(nawal_ops_cpu(1), &prm, v, NULL, n - 1, &fr, &len, err, sizeof err), 0, "%s", err);
            agg_write_bytes(f.paths[p], fr, len);
            free(fr);
            break;
        case 1:
        case 2:
            cr_assert_eq(nawal_delta_encode(nawal_ops_cpu(1), &prm, v, NULL, n, &fr, &len, err, sizeof err), 0, "%s", err);
            agg_write_bytes(f.paths[p], fr, bad[b].what == 1 ? 20 : len - 7);
            free(fr);
            break;
        case 3:
            v[test_rand_u64(&seed) % n] = NAN;
            write_raw_dense_frame(f.paths[p], v, n);
            break;
        default:
            write_frame(f.paths[p], v, K_TOPK_I8, &seed);
            f.w[p] = 0;
        }
    }
    free(v);
    nawal_fedavg_options o = {2, 1000, 0, 0};
    agg_membuf out, clean;
    char reasons[11][NAWAL_AGG_REASON_BYTES];
    cr_assert_eq(agg_run_fedavg(&o, f.base_path, f.paths, f.w, k, &out, reasons), 0);
    for (size_t b = 0; b < nb; b++)
        cr_assert(strstr(reasons[pos[b]], bad[b].want), "update %zu: reason '%s' should mention '%s' (seed %llu)", pos[b],
                  reasons[pos[b]], bad[b].want, (unsigned long long)seed0);
    for (size_t i = 0; i < k; i++)
        if (use[i]) cr_assert_str_empty(reasons[i], "good update %zu (%s) rejected: %s", i, kind_name[f.kinds[i]], reasons[i]);
    char (*good)[256] = calloc(k, 256);
    uint64_t gw[11];
    size_t ng = 0;
    for (size_t i = 0; i < k; i++)
        if (use[i]) { memcpy(good[ng], f.paths[i], 256); gw[ng++] = f.w[i]; }
    cr_assert_eq(agg_run_fedavg(&o, f.base_path, good, gw, ng, &clean, reasons), 0);
    cr_assert(out.len == clean.len && memcmp(out.p, clean.p, out.len) == 0,
              "a rejected frame left a trace in the result (seed %llu)", (unsigned long long)seed0);
    float *got = agg_parse(&out);
    double *want = agg_reference(f.base, f.d, f.w, use, k);
    agg_check_close(got, want, f.base, f.d, use, k, seed0);
    free(got);
    free(want);
    free(good);
    free(out.p);
    free(clean.p);
    fixture_free(&f);
}

/* The flat vector follows the data, not the header's key order. */
Test(coord_codec_agg, flat_order_is_data_order) {
    /* "a" is listed first but its data comes second */
    const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(json), len = 8 + hl + 20;
    uint8_t *buf = calloc(1, len);
    for (int b = 0; b < 8; b++) buf[b] = (uint8_t)((uint64_t)hl >> (8 * b));
    memcpy(buf + 8, json, hl);
    const float vals[5] = {1, 2, 3, 4, 5}; /* flat: b = {1, 2}, a = {3, 4, 5} */
    memcpy(buf + 8 + hl, vals, 20);
    char path[256], err[512] = "";
    snprintf(path, sizeof path, "%s/order.safetensors", g_root);
    agg_write_bytes(path, buf, len);
    nawal_st_file *f;
    cr_assert_eq(nawal_st_parse(&f, buf, len, "order", err, sizeof err), 0, "%s", err);
    size_t order[2];
    uint64_t n = 0;
    cr_assert_eq(nawal_flat_order(f, order, &n, err, sizeof err), 0);
    cr_assert_eq(n, 5);
    cr_assert_str_eq(nawal_st_at(f, order[0])->name, "b");
    cr_assert_str_eq(nawal_st_at(f, order[1])->name, "a");
    nawal_st_free(f);
    /* the tensor source lists tensors in that order too: FedAvg's accumulator is the flat vector */
    nawal_tensor_source *src;
    cr_assert_eq(nawal_tensor_source_open_file(&src, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(src->n_tensors, 2);
    cr_assert_str_eq(src->tensors[0].name, "b");
    cr_assert_str_eq(src->tensors[1].name, "a");
    nawal_tensor_source_close(src);
    /* base + a frame adding 10 x flat index: b = {1, 12}, a = {23, 34, 45} */
    const float dv[5] = {0, 10, 20, 30, 40};
    char fpath[256];
    snprintf(fpath, sizeof fpath, "%s/order.frame", g_root);
    write_raw_dense_frame(fpath, dv, 5);
    char paths[1][256], reasons[1][NAWAL_AGG_REASON_BYTES];
    memcpy(paths[0], fpath, sizeof fpath);
    uint64_t w = 3;
    agg_membuf out;
    cr_assert_eq(agg_run_fedavg(NULL, path, paths, &w, 1, &out, reasons), 0, "%s", reasons[0]);
    cr_assert_eq(nawal_st_parse(&f, out.p, out.len, "out", err, sizeof err), 0, "%s", err);
    const nawal_st_tensor *a = nawal_st_find(f, "a"), *b = nawal_st_find(f, "b");
    const float *av = a->data, *bv = b->data;
    cr_assert(bv[0] == 1 && bv[1] == 12 && av[0] == 23 && av[1] == 34 && av[2] == 45);
    nawal_st_free(f);
    free(out.p);
    free(buf);
}

/* ---- round-level driver ---------------------------------------------------- */

Test(coord_codec_agg, round_driver_takes_frames) {
    uint64_t seed0 = fresh_seed(), seed = seed0;
    const size_t k = 7;
    fixture f;
    fixture_make(&f, &seed, k);
    /* update 6: a truncated frame */
    write_frame(f.paths[6], f.d[6], K_TOPK_F16, &seed);
    agg_truncate(f.paths[6], 3);
    char err[512] = "";
    int64_t id;
    nawal_store *s = agg_store_round(g_root, &f, &id);
    int use[7];
    for (size_t i = 0; i < k; i++) use[i] = i != 6;
    nawal_agg_result res;
    nawal_agg_config cfg = {"fedavg", 2};
    cr_assert_eq(nawal_round_aggregate(s, id, &cfg, 1, &res, err, sizeof err), 0, "%s", err);
    cr_assert(res.has_model, "%s", res.note);
    cr_assert_eq(res.n_accepted, k - 1);
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(res.verdicts[i].accepted, use[i], "update %zu (%s): %s", i, kind_name[f.kinds[i]], res.verdicts[i].reason);
    cr_assert(strstr(res.verdicts[6].reason, "zstd"), "%s", res.verdicts[6].reason);
    float *got = agg_read_blob(s, res.model_cid);
    double *want = agg_reference(f.base, f.d, f.w, use, k);
    agg_check_close(got, want, f.base, f.d, use, k, seed0);
    free(got);
    free(want);
    nawal_agg_result_free(&res);
    nawal_store_close(s);
    fixture_free(&f);
}
