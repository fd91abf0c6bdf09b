/* test_coord_sim.c - `nawal-coordinator sim`: a whole federation (serve +
 * 3 `nawal-agent run` processes over loopback TLS with a self-signed
 * certificate) on a tiny model and a small generated corpus, top-k 0.01,
 * for 3 rounds.
 * Checked: exit 0, one printed line per round with 3 participants, the
 * ledger verifies and each round's payouts sum to the pool, and the global
 * model after round 2 is FedAvg of round 2's stored updates applied to its
 * base, recomputed here from the blobs (codec frames decoded with
 * nawal_delta_decode, models flattened in proto/flat_model.h's order,
 * weights = the examples recorded in the database), in double precision,
 * within aggregate.h's error bound; and the validators' evaluations: after
 * each round, every agent's EvaluateResult of the new model is recorded,
 * its loss equal (1e-5 relative) to the model's loss computed here with the
 * model code on the same file and the same validation tokens (the agent's
 * data, byte-level, its last 10%, at most 32 windows), and the printed
 * "fed val" column is the rows' token-weighted mean; and the compressed
 * downlink (model patches, proto/model_patch.h): every closed round's patch
 * is recorded, each agent logs models built from patches from round 2's
 * base on, its cached models are byte-identical to the coordinator's
 * blobs, and the coordinator sends far fewer bytes in rounds 2 and 3 than
 * in round 1 (where the initial model goes whole). A second federation has
 * a Byzantine agent (sim --byzantine) that Krum drops in every round. */
#include "coord_test_util.h"
#include "checkpoint.h"
#include "cid.h"
#include "corpus.h"
#include "delta_codec.h"
#include "fileio.h"
#include "flat_model.h"
#include "identity.h"
#include "patches.h"
#include "rounds.h"
#include "safetensors.h"
#include "trainer.h"

#include <math.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/wait.h>

#define MODEL "1,2,32,32,257"
#define POOL 100000000000000ull /* sim's pool per round (100 DALLA) */
#define EVAL_WINDOWS 32         /* validation windows an agent evaluates (agent/evaluate.h) */

static char g_root[128];

static void setup(void) { coord_make_root(g_root, sizeof g_root, "sim"); }
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_sim, .init = setup, .fini = teardown, .timeout = 300);

/* A model file's flat vector (flat_model.h), malloc'ed; *n its length. */
static float *flat_model(const char *path, size_t *n) {
    char err[512] = "";
    nawal_st_file *f = NULL;
    cr_assert_eq(nawal_st_read(&f, path, err, sizeof err), 0, "%s: %s", path, err);
    size_t *order = malloc((nawal_st_count(f) + 1) * sizeof *order);
    uint64_t n64 = 0;
    cr_assert_eq(nawal_flat_order(f, order, &n64, err, sizeof err), 0, "%s", err);
    float *v = malloc(n64 * sizeof *v);
    cr_assert(v);
    size_t pos = 0;
    for (size_t k = 0; k < nawal_st_count(f); k++) {
        const nawal_st_tensor *t = nawal_st_at(f, order[k]);
        cr_assert_eq(t->dtype, NAWAL_ST_F32);
        memcpy(v + pos, t->data, t->nbytes);
        pos += t->nbytes / sizeof(float);
    }
    cr_assert_eq(pos, n64);
    free(order);
    nawal_st_free(f);
    *n = (size_t)n64;
    return v;
}

static void blob_path(nawal_store *s, const uint8_t cid[32], char *out, size_t cap) {
    cr_assert_eq(nawal_blobstore_path(s, cid, out, cap), 0);
}

/* The round's new model against base + sum w_i d_i / sum w_i, recomputed. */
static void check_fedavg(nawal_store *s, int64_t round_id) {
    char err[512] = "", path[4096];
    nawal_round r;
    cr_assert_eq(nawal_store_round_get(s, round_id, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "round %lld is %s", (long long)round_id, nawal_round_state_name(r.state));
    cr_assert(r.has_model_cid);
    cr_assert(!nawal_cid_equal(r.model_cid, r.base_cid), "round %lld changed the model", (long long)round_id);
    size_t n = 0, n2 = 0;
    blob_path(s, r.base_cid, path, sizeof path);
    float *base = flat_model(path, &n);
    blob_path(s, r.model_cid, path, sizeof path);
    float *got = flat_model(path, &n2);
    cr_assert_eq(n, n2, "base and new model differ in length");

    nawal_submission *subs = NULL;
    size_t ns = 0;
    cr_assert_eq(nawal_store_submissions(s, round_id, &subs, &ns, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ns, 3, "round %lld: %zu updates recorded", (long long)round_id, ns);
    double *sum = calloc(n, sizeof *sum), wsum = 0, dmax = 0;
    float *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < ns; i++) {
        cr_assert(!subs[i].rejected, "update %zu rejected by the aggregation", i);
        size_t len;
        blob_path(s, subs[i].delta_cid, path, sizeof path);
        char *frame = coord_slurp(path, &len);
        cr_assert(frame, "delta blob %s", path);
        cr_assert_eq(nawal_delta_decode(d, n, (const uint8_t *)frame, len, err, sizeof err), 0, "delta %zu: %s", i, err);
        free(frame);
        double w = (double)subs[i].num_examples;
        cr_assert(w > 0);
        wsum += w;
        size_t nonzero = 0;
        for (size_t e = 0; e < n; e++) {
            sum[e] += w * d[e];
            nonzero += d[e] != 0.0f;
            if (fabs(d[e]) > dmax) dmax = fabs(d[e]);
        }
        cr_assert(nonzero > 0 && nonzero < n, "update %zu: top-k frame sends %zu of %zu entries", i, nonzero, n);
    }
    size_t changed = 0;
    for (size_t e = 0; e < n; e++) {
        double want = (double)base[e] + sum[e] / wsum;
        double tol = (ns + 3) * 0x1p-24 * (dmax + fabs(base[e])) + 1e-12;
        cr_assert(fabs((double)got[e] - want) <= tol, "element %zu: model %.9g, FedAvg %.9g (base %.9g, tolerance %.3g)", e,
                  (double)got[e], want, (double)base[e], tol);
        changed += got[e] != base[e];
    }
    cr_assert(changed > 0);
    free(sum);
    free(d);
    free(subs);
    free(base);
    free(got);
}

/* Each closed round's payouts sum exactly to the pool. */
static void check_payouts(nawal_store *s, int64_t round_id) {
    char err[512] = "";
    uint64_t seq;
    nawal_ledger_record rec;
    cr_assert_eq(nawal_ledger_find_round(s, round_id, &seq, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_ledger_get(s, seq, &rec, err, sizeof err), 0, "%s", err);
    uint64_t paid = 0;
    for (size_t i = 0; i < rec.entry.n_payouts; i++) paid += rec.entry.payouts[i].amount_planck;
    cr_assert_eq(paid, POOL, "round %lld paid %llu planck of a %llu pool", (long long)round_id, (unsigned long long)paid,
                 POOL);
    nawal_ledger_record_free(&rec);
}

/* The loss of the model file at path on the validation split of the text file data, computed here:
 * byte-level tokens, the corpus's last 10% (corpus.h), at most EVAL_WINDOWS windows of the context. */
static double val_loss_here(const char *path, const char *data, uint64_t *tokens) {
    char err[512] = "";
    nawal_tokenizer *tok = NULL;
    nawal_corpus c = {0};
    nawal_gpt *m = NULL;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    cr_assert_eq(nawal_corpus_load(&c, data, tok, 0, err, sizeof err), 0, "%s: %s", data, err);
    cr_assert_eq(nawal_model_file_load(&m, nawal_ops_cpu(1), path, 4, err, sizeof err), 0, "%s: %s", path, err);
    size_t n_val = c.n_tokens - c.n_train, cap = (size_t)EVAL_WINDOWS * (size_t)m->cfg.n_ctx + 1, np = 0;
    double loss = NAN;
    cr_assert_eq(nawal_eval_tokens(m, c.tokens + c.n_train, n_val < cap ? n_val : cap, &loss, &np, err, sizeof err), 0,
                 "%s", err);
    *tokens = np;
    nawal_gpt_free(m);
    nawal_corpus_free(&c);
    nawal_tokenizer_free(tok);
    return loss;
}

/* Round round_id's evaluations: one row per validator of the federation in fed, of the round's new model,
 * each loss as computed here; returns the rows' token-weighted mean. */
static double check_evaluations(nawal_store *s, const char *fed, int64_t round_id) {
    char err[512] = "", path[4096];
    nawal_round r;
    cr_assert_eq(nawal_store_round_get(s, round_id, &r, err, sizeof err), 0, "%s", err);
    blob_path(s, r.model_cid, path, sizeof path);
    double num = 0, den = 0;
    for (int i = 0; i < 3; i++) {
        char pub[300], data[300];
        snprintf(pub, sizeof pub, "%s/validators/%d/identity.pub", fed, i);
        snprintf(data, sizeof data, "%s/validators/%d/data.txt", fed, i);
        char *hex = coord_slurp(pub, NULL);
        cr_assert(hex, "%s", pub);
        hex[64] = 0;
        uint8_t pk[32];
        cr_assert_eq(nawal_pubkey_from_hex(pk, hex, NULL, 0), 0);
        free(hex);
        sqlite3_stmt *st;
        cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "SELECT loss, tokens, model_cid FROM evaluations"
                                        " WHERE round_id = ?1 AND validator = ?2", -1, &st, NULL), SQLITE_OK);
        sqlite3_bind_int64(st, 1, round_id);
        sqlite3_bind_blob(st, 2, pk, 32, SQLITE_STATIC);
        cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "round %lld: no evaluation from validator %d", (long long)round_id, i);
        double loss = sqlite3_column_double(st, 0);
        uint64_t tokens = (uint64_t)sqlite3_column_int64(st, 1);
        cr_assert(sqlite3_column_bytes(st, 2) == 32 && !memcmp(sqlite3_column_blob(st, 2), r.model_cid, 32),
                  "round %lld: validator %d evaluated another model", (long long)round_id, i);
        cr_assert_eq(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        uint64_t want_tokens;
        double want = val_loss_here(path, data, &want_tokens);
        cr_assert_eq(tokens, want_tokens, "round %lld, validator %d: %llu tokens, %llu here", (long long)round_id, i,
                     (unsigned long long)tokens, (unsigned long long)want_tokens);
        cr_assert(fabs(loss - want) <= 1e-5 * want, "round %lld, validator %d: loss %.9g, %.9g here", (long long)round_id,
                  i, loss, want);
        num += loss * (double)tokens;
        den += (double)tokens;
    }
    nawal_evaluation_summary sum;
    cr_assert_eq(nawal_round_evaluation_summary(s, round_id, &sum, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sum.results, 3, "round %lld: %llu evaluations", (long long)round_id, (unsigned long long)sum.results);
    cr_assert(fabs(sum.loss - num / den) <= 1e-12 * sum.loss, "summary %.17g, rows %.17g", sum.loss, num / den);
    return num / den;
}

/* The "fed val" column of round's printed line (NAN when "-" or absent). */
static double printed_fed_val(const char *out, int round) {
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        int r = 0;
        char part[32], tl[32], vl[32], fv[32];
        if (sscanf(l, "%d %31s %31s %31s %31s", &r, part, tl, vl, fv) == 5 && r == round && !strcmp(part, "3/3"))
            return strcmp(fv, "-") ? strtod(fv, NULL) : NAN;
    }
    return NAN;
}

/* The "bytes down" column (the 8th) of round's printed line (-1 when absent). */
static double printed_bytes_down(const char *out, int round) {
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        int r = 0;
        char f[7][32];
        double down;
        if (sscanf(l, "%d %31s %31s %31s %31s %31s %31s %lf", &r, f[0], f[1], f[2], f[3], f[4], f[5], &down) == 8 &&
            r == round && !strcmp(f[0], "3/3"))
            return down;
    }
    return -1;
}

static uint8_t *file_bytes(const char *path, size_t *len) {
    uint8_t *b;
    char err[512] = "";
    cr_assert_eq(nawal_file_read_all(path, UINT64_MAX, &b, len, err, sizeof err), 0, "%s", err);
    return b;
}

/* The downlink of rounds 1..rounds: patches recorded, agents building models from them, their caches equal
 * to the coordinator's blobs. */
static void check_patches(nawal_store *s, const char *fed, int rounds) {
    char err[512] = "", path[1024], hex[NAWAL_CID_HEX_BYTES];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/logs/agent-%d.log", fed, i);
        char *log = coord_slurp(path, NULL);
        cr_assert(log, "%s", path);
        int n = 0;
        for (char *l = strtok(log, "\n"); l; l = strtok(NULL, "\n")) n += strstr(l, " from a ") && strstr(l, " patch of ");
        cr_assert(n >= rounds - 1, "agent %d built %d models from patches:\n%s", i, n, log);
        free(log);
    }
    for (int r = 1; r <= rounds; r++) {
        nawal_round rr;
        cr_assert_eq(nawal_store_round_get(s, r, &rr, err, sizeof err), 0, "%s", err);
        nawal_patch_row row;
        cr_assert_eq(nawal_patch_find(s, rr.model_cid, &row, err, sizeof err), 1, "round %d: no patch: %s", r, err);
        cr_assert(nawal_cid_equal(row.from_cid, rr.base_cid));
        size_t nblob, ncache;
        blob_path(s, rr.model_cid, path, sizeof path);
        uint8_t *blob = file_bytes(path, &nblob);
        nawal_cid_to_hex(hex, rr.model_cid);
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/validators/%d/state/models/%s.safetensors", fed, i, hex);
            if (r == rounds && access(path, F_OK) != 0) continue; /* the last model: evaluated, not trained from */
            uint8_t *cache = file_bytes(path, &ncache);
            cr_assert(ncache == nblob && !memcmp(cache, blob, nblob), "agent %d: cached model of round %d differs", i, r);
            free(cache);
        }
        free(blob);
    }
}

/* The printed line of a round: "    R           3/3  ..." */
static int round_line(const char *out, int round) {
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        int r = 0, used = 0;
        char part[32];
        if (sscanf(l, "%d %31s%n", &r, part, &used) == 2 && r == round && !strcmp(part, "3/3")) return 1;
    }
    return 0;
}

/* words random words of a 12-word vocabulary, 13 to a line */
static void write_corpus(const char *path, int words_n, uint64_t seed) {
    static const char *words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "far", "hills"};
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    for (int i = 0; i < words_n; i++) fprintf(f, "%s%s", words[test_rand_u64(&seed) % 12], i % 13 == 12 ? ".\n" : " ");
    cr_assert_eq(fclose(f), 0);
}

Test(coord_sim, three_agents_three_rounds_tls) {
    char corpus[256], fed[256], out_path[256], cmd[2048];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", g_root);
    snprintf(fed, sizeof fed, "%s/fed", g_root);
    snprintf(out_path, sizeof out_path, "%s/sim.out", g_root);
    write_corpus(corpus, 9000, 5);
    snprintf(cmd, sizeof cmd,
             "%s sim --data %s --dir %s --validators 3 --rounds 3 --steps 6 --batch 4 --topk 0.01 --model-config " MODEL
             " --threads 1 >%s 2>&1",
             NAWAL_COORDINATOR_BIN, corpus, fed, out_path);
    int rc = system(cmd);
    char *out = coord_slurp(out_path, NULL);
    cr_assert_eq(rc, 0, "sim failed (%d):\n%s", rc, out ? out : "");
    cr_assert(round_line(out, 1) && round_line(out, 2) && round_line(out, 3),
              "no line for rounds 1 to 3 with 3/3 participants:\n%s", out);
    cr_assert(!round_line(out, 4), "a fourth round printed:\n%s", out);
    cr_assert(strstr(out, "ledger ok: 3 records"), "%s", out);
    cr_assert(strstr(out, "wss://127.0.0.1:"), "not TLS:\n%s", out);
    cr_assert(strstr(out, "fed val"), "no fed val column:\n%s", out);
    double fed_val[4] = {NAN, printed_fed_val(out, 1), printed_fed_val(out, 2), printed_fed_val(out, 3)};
    cr_assert(isfinite(fed_val[1]) && isfinite(fed_val[2]) && isfinite(fed_val[3]), "fed val missing:\n%s", out);
    /* the downlink: round 1 sends the initial model whole, later rounds patches */
    double down[4] = {0, printed_bytes_down(out, 1), printed_bytes_down(out, 2), printed_bytes_down(out, 3)};
    cr_assert(down[1] > 0 && down[2] > 0 && down[3] > 0, "no bytes down column:\n%s", out);
    cr_assert(down[2] * 4 < down[1] && down[3] * 4 < down[1], "bytes down did not drop:\n%s", out);
    free(out);

    /* TLS material: a certificate naming 127.0.0.1 */
    char path[512];
    snprintf(path, sizeof path, "%s/tls/cert.pem", fed);
    FILE *cf = fopen(path, "r");
    cr_assert(cf, "%s", path);
    X509 *x = PEM_read_X509(cf, NULL, NULL, NULL);
    fclose(cf);
    cr_assert(x);
    cr_assert_eq(X509_check_ip_asc(x, "127.0.0.1", 0), 1, "certificate does not name 127.0.0.1");
    X509_free(x);

    char coord[300];
    snprintf(coord, sizeof coord, "%s/coordinator", fed);
    snprintf(cmd, sizeof cmd, "%s ledger verify --dir %s >>%s 2>&1", NAWAL_COORDINATOR_BIN, coord, out_path);
    cr_assert_eq(system(cmd), 0, "ledger verify failed");
    nawal_store *s = NULL;
    char err[512] = "";
    cr_assert_eq(nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    check_fedavg(s, 2);
    check_payouts(s, 1);
    check_payouts(s, 2);
    nawal_round r1, r2;
    cr_assert_eq(nawal_store_round_get(s, 1, &r1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_store_round_get(s, 2, &r2, err, sizeof err), 0, "%s", err);
    cr_assert(nawal_cid_equal(r2.base_cid, r1.model_cid), "round 2 starts from round 1's model");
    check_patches(s, fed, 3);
    for (int k = 1; k <= 3; k++) {
        double mean = check_evaluations(s, fed, k);
        cr_assert(fabs(fed_val[k] - mean) <= 5.1e-5, "round %d: fed val printed %.4f, rows' mean %.9g", k, fed_val[k],
                  mean);
    }
    nawal_store_close(s);
}

Test(coord_sim, usage_errors) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s sim --validators 3 >/dev/null 2>&1", NAWAL_COORDINATOR_BIN);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "sim without --data: %d", rc);
    snprintf(cmd, sizeof cmd, "%s sim --data /dev/null --dp >/dev/null 2>&1", NAWAL_COORDINATOR_BIN);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "sim --dp without --epsilon: %d", rc);
    snprintf(cmd, sizeof cmd, "%s sim --data /nonexistent/corpus.txt --dir %s/x >/dev/null 2>&1", NAWAL_COORDINATOR_BIN,
             g_root);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "sim on a missing corpus: %d", rc);
    snprintf(cmd, sizeof cmd, "%s sim --data /dev/null --validators 3 --byzantine 3 >/dev/null 2>&1", NAWAL_COORDINATOR_BIN);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "sim with no honest validator: %d", rc);
    snprintf(cmd, sizeof cmd, "%s sim --data /dev/null --byzantine 1 --attack flip >/dev/null 2>&1", NAWAL_COORDINATOR_BIN);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "sim --attack flip: %d", rc);
    snprintf(cmd, sizeof cmd, "%s sim --data /dev/null --strategy krum:x >/dev/null 2>&1", NAWAL_COORDINATOR_BIN);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "sim --strategy krum:x: %d", rc);
}

/* One Byzantine agent (NAWAL_AGENT_TEST_ATTACK through sim --byzantine)
 * among four, dense deltas, Krum with f = 1: in every round the attacker's
 * update, and only it, is dropped with Krum's reason, and the new model is
 * the plain mean of the three honest deltas applied to the base. */
Test(coord_sim, byzantine_validator_dropped_by_krum) {
    char corpus[256], fed[256], out_path[256], cmd[2048];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", g_root);
    snprintf(fed, sizeof fed, "%s/fed", g_root);
    snprintf(out_path, sizeof out_path, "%s/sim.out", g_root);
    write_corpus(corpus, 12000, fresh_seed());
    snprintf(cmd, sizeof cmd,
             "%s sim --data %s --dir %s --validators 4 --byzantine 1 --attack scale:-4 --rounds 2 --steps 6 --batch 4 "
             "--topk 1 --strategy krum:1 --plaintext --model-config " MODEL " --threads 1 >%s 2>&1",
             NAWAL_COORDINATOR_BIN, corpus, fed, out_path);
    int rc = system(cmd);
    char *out = coord_slurp(out_path, NULL);
    cr_assert_eq(rc, 0, "sim failed (%d):\n%s", rc, out ? out : "");
    cr_assert(strstr(out, "Byzantine: the last 1 of the 4 agents send scale:-4"), "%s", out);
    free(out);

    char path[512], hex[128] = "", err[512] = "";
    snprintf(path, sizeof path, "%s/validators/3/identity.pub", fed);
    FILE *pf = fopen(path, "r");
    cr_assert(pf && fscanf(pf, "%64s", hex) == 1, "%s", path);
    fclose(pf);
    uint8_t byz[32];
    cr_assert_eq(nawal_pubkey_from_hex(byz, hex, err, sizeof err), 0, "%s", err);
    char coord[300];
    snprintf(coord, sizeof coord, "%s/coordinator", fed);
    nawal_store *s = NULL;
    cr_assert_eq(nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    for (int64_t id = 1; id <= 2; id++) {
        nawal_round r;
        cr_assert_eq(nawal_store_round_get(s, id, &r, err, sizeof err), 0, "%s", err);
        cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "round %lld is %s", (long long)id, nawal_round_state_name(r.state));
        nawal_submission *subs = NULL;
        size_t ns = 0;
        cr_assert_eq(nawal_store_submissions(s, id, &subs, &ns, err, sizeof err), 0, "%s", err);
        cr_assert_eq(ns, 4, "round %lld: %zu updates", (long long)id, ns);
        size_t n = 0, n2 = 0;
        blob_path(s, r.base_cid, path, sizeof path);
        float *base = flat_model(path, &n);
        blob_path(s, r.model_cid, path, sizeof path);
        float *got = flat_model(path, &n2);
        cr_assert_eq(n, n2);
        double *sum = calloc(n, sizeof *sum);
        float *d = malloc(n * sizeof *d);
        for (size_t i = 0; i < ns; i++) {
            int is_byz = !memcmp(subs[i].validator, byz, 32);
            cr_assert_eq(subs[i].rejected, is_byz, "round %lld: update %zu (%s) %s", (long long)id, i,
                         is_byz ? "Byzantine" : "honest", subs[i].rejected ? "dropped" : "used");
            if (is_byz) continue;
            size_t len;
            blob_path(s, subs[i].delta_cid, path, sizeof path);
            char *frame = coord_slurp(path, &len);
            cr_assert(frame);
            cr_assert_eq(nawal_delta_decode(d, n, (const uint8_t *)frame, len, err, sizeof err), 0, "%s", err);
            free(frame);
            for (size_t e = 0; e < n; e++) sum[e] += d[e];
        }
        for (size_t e = 0; e < n; e++) {
            double want = (double)base[e] + sum[e] / 3.0;
            cr_assert(fabs(got[e] - want) <= 1e-6 * (fabs(want) + 1e-3), "round %lld element %zu: %.9g vs %.9g",
                      (long long)id, e, got[e], want);
        }
        free(sum);
        free(d);
        free(base);
        free(got);
        free(subs);
    }
    nawal_store_close(s);
    /* the operator's view: round status lists each update with its verdict */
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES], line[160];
    nawal_fingerprint_short(fp, byz);
    snprintf(cmd, sizeof cmd, "%s round status --dir %s --round 2 >%s 2>&1", NAWAL_COORDINATOR_BIN, coord, out_path);
    cr_assert_eq(system(cmd), 0);
    out = coord_slurp(out_path, NULL);
    snprintf(line, sizeof line, "  update       %s  ", fp);
    const char *at = out ? strstr(out, line) : NULL;
    cr_assert(at && !strncmp(strchr(at, ':') + 2, "dropped: krum: not among the 3 of 4", 35), "round status:\n%s", out ? out : "");
    int used = 0, updates = 0;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, "  update ", 9)) {
            updates++;
            size_t n = strlen(l);
            used += n > 6 && !strcmp(l + n - 6, ": used");
        }
    cr_assert(updates == 4 && used == 3, "%d updates listed, %d used", updates, used);
    free(out);
}
