/* test_coord_agent_run.c - `nawal-agent run` against `nawal-coordinator
 * serve`, both as child processes on loopback (plaintext): a coordinator
 * directory with a tiny model, validators registered from `nawal-agent
 * keygen` keys, a round started, agents trained on small generated text
 * files with --rounds 1. Checked: every agent exits 0, the round closes with
 * each agent's update recorded once and aggregated (codec frames and a
 * dense safetensors delta), the new global model differs from the base,
 * the ledger verifies; and an agent that dies between its UpdateSubmit and
 * the upload (NAWAL_AGENT_TEST_CRASH=upload) and is restarted resubmits
 * from its state directory, so its update counts exactly once; and an agent
 * killed during a DP-SGD round's local training, right after its snapshot
 * at step 10 of 20 (NAWAL_AGENT_TEST_CRASH=train:10), resumes from that
 * snapshot when restarted, its update counts exactly once, its privacy
 * budget holds exactly the 20 steps executed, and the snapshot and the
 * temporary file of a save killed mid-way are gone; another agent finding
 * a damaged snapshot in its state directory says so, removes it and
 * trains from step 0; an agent killed after writing its update file but
 * before saving its submission record (NAWAL_AGENT_TEST_CRASH=collect)
 * resumes from the snapshot of its last step instead of training again
 * (no step charged twice); a snapshot left beside a submission record of
 * the round is removed by the restarted agent; and the compressed downlink's
 * fall-back: after a top-k round 1 (whose new model each agent built from
 * the model patch to evaluate it), the patch blob for round 2's base is
 * corrupted in the coordinator's blob store (same length, so still
 * announced) and the agents' cached round-2 base removed (agent b's from
 * model too): in round 2 agent a logs why the patch cannot be used and
 * downloads the whole model, agent b downloads it without trying the patch,
 * both cached bases equal the coordinator's blob byte for byte, no patch
 * file is left, and round 2 closes with each update recorded once. */
#include "coord_proc_test_util.h"
#include "cid.h"
#include "patches.h"

#include <dirent.h>
#include <sys/stat.h>

#define MODEL "1,2,32,32,257"
#define STAKE "1000000000000"
#define POOL 1000000000000ull

static char g_root[128], g_dir[160];

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "agent_run");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_agent_run, .init = setup, .fini = teardown, .timeout = 300);

static void serve_start(serve_proc *p) {
    char log[200];
    snprintf(log, sizeof log, "%s/serve.log", g_root);
    serve_start_at(p, g_dir, log, "--insecure-plaintext");
}

static void validator_new(validator *v, const char *name, uint64_t seed) {
    validator_make(v, g_root, g_dir, name, STAKE, seed);
}

/* Round id closed with a new model, and exactly one recorded update from each of vs[0..n). */
static void check_round_id(int64_t id, const validator *vs, size_t n) {
    nawal_store *s = coord_open(g_dir);
    char err[512] = "";
    nawal_round r;
    cr_assert_eq(nawal_store_round_get(s, id, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "round %lld is %s, not closed", (long long)id,
                 nawal_round_state_name(r.state));
    cr_assert(r.has_model_cid, "round %lld has a new model", (long long)id);
    cr_assert(!nawal_cid_equal(r.model_cid, r.base_cid), "the new global model differs from the base");
    nawal_submission *subs = NULL;
    size_t ns = 0;
    cr_assert_eq(nawal_store_submissions(s, id, &subs, &ns, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ns, n, "%zu updates recorded, expected %zu", ns, n);
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < ns; j++) seen += !memcmp(subs[j].validator, vs[i].pk, 32);
        cr_assert_eq(seen, 1, "validator %s has %d updates recorded", vs[i].name, seen);
    }
    free(subs);
    nawal_store_close(s);
}
static void check_round(const validator *vs, size_t n) { check_round_id(1, vs, n); }

/* ---- tests ------------------------------------------------------------------- */

Test(coord_agent_run, three_agents_one_round) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v[3];
    validator_new(&v[0], "a", 1);
    validator_new(&v[1], "b", 2);
    validator_new(&v[2], "c", 3);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 3 --min 2 --deadline-s 240 --join-window-s 120 "
             "--steps 8 --batch 4 --lr 0.003", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    serve_start(&sp);
    validator_start(&v[0], sp.port, STAKE, NULL, NULL);                    /* codec frames (the default) */
    validator_start(&v[1], sp.port, STAKE, "--delta-format codec", NULL);
    validator_start(&v[2], sp.port, STAKE, "--delta-format dense", NULL);  /* a safetensors delta */
    for (int i = 0; i < 3; i++) validator_expect_exit(&v[i], 0, 180);
    for (int i = 0; i < 3; i++) {
        validator_log_has(&v[i], "round 1: base model downloaded in "); /* GET /blobs/<cid> with the session's token */
        validator_log_has(&v[i], " s (HTTP)\n");
        validator_log_has(&v[i], "round 1: update accepted");
        validator_log_has(&v[i], "round 1: closed: new model");
        validator_log_has(&v[i], "3 updates accepted (ours included)");
        char path[300];
        snprintf(path, sizeof path, "%s/state/submission", v[i].key);
        char *sub = coord_slurp(path, NULL);
        cr_assert(sub && strstr(sub, "round 1\n") && strstr(sub, "acked 1\n"), "submission record:\n%s", sub ? sub : "");
        free(sub);
    }
    serve_stop_clean(&sp);
    check_round(v, 3);
    coord_sh(g_root, "%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}

/* ---- an agent killed and restarted ------------------------------------------- */

/* A fresh coordinator with a round for validators a and b (v[0], v[1],
 * keys from seed and seed + 1) started with ROUND_FLAGS, and serve up;
 * no validator runs yet. */
static void two_validator_round(validator v[2], serve_proc *sp, uint64_t seed, const char *round_flags) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator_new(&v[0], "a", seed);
    validator_new(&v[1], "b", seed + 1);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 2 --min 2 --deadline-s 240 --join-window-s 120 %s",
             NAWAL_COORDINATOR_BIN, g_dir, POOL, round_flags);
    serve_start(sp);
}

/* two_validator_round, then b run with CRASH in its environment until it exits 3. */
static void round_with_crash(validator v[2], serve_proc *sp, uint64_t seed, const char *round_flags, const char *crash) {
    two_validator_round(v, sp, seed, round_flags);
    validator_start(&v[1], sp->port, STAKE, NULL, crash);
    validator_expect_exit(&v[1], 3, 180);
}

/* a started and b restarted on its state directory: both exit 0 with both updates in the round. */
static void restart_both(validator v[2], const serve_proc *sp) {
    validator_start(&v[0], sp->port, STAKE, NULL, NULL);
    validator_start(&v[1], sp->port, STAKE, NULL, NULL);
    validator_expect_exit(&v[0], 0, 180);
    validator_expect_exit(&v[1], 0, 180);
    for (int i = 0; i < 2; i++) validator_log_has(&v[i], "2 updates accepted (ours included)");
}

/* serve stopped; the round closed with each update recorded once; the ledger verifies. */
static void round_closed_once(validator v[2], serve_proc *sp) {
    serve_stop_clean(sp);
    check_round(v, 2);
    coord_sh(g_root, "%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}

/* path (in a validator's state directory) with a few junk bytes, as a killed process could leave it */
static void junk_file(const validator *v, const char *name, char *path, size_t cap) {
    snprintf(path, cap, "%s/state/%s", v->key, name);
    FILE *f = fopen(path, "w");
    cr_assert(f && fputs("not a snapshot\n", f) >= 0 && fclose(f) == 0, "%s", path);
}

Test(coord_agent_run, agent_killed_mid_upload_counts_once) {
    validator v[2];
    serve_proc sp;
    round_with_crash(v, &sp, 11, "--steps 6 --batch 4", "NAWAL_AGENT_TEST_CRASH=upload");
    validator_log_has(&v[1], "round 1: update submitted");
    /* a snapshot beside the round's submission record (a kill between saving the one and removing the other) */
    char ckpt[300];
    junk_file(&v[1], "train.ckpt", ckpt, sizeof ckpt);
    restart_both(v, &sp);
    validator_log_has(&v[1], "round 1: resubmitting the update made earlier");
    cr_assert_neq(access(ckpt, F_OK), 0, "the snapshot outlived the submission record");
    char *log = coord_slurp(v[1].log, NULL);
    /* trained once: the restart did not train again */
    const char *first = strstr(log, "round 1: training\n");
    cr_assert(log && first && !strstr(first + 1, "round 1: training\n"), "agent b trained twice:\n%s", log);
    free(log);
    round_closed_once(v, &sp);
}

/* The "steps N" line of a validator's privacy budget file. */
static unsigned long long budget_steps(const validator *v) {
    char path[300];
    snprintf(path, sizeof path, "%s/privacy_budget", v->key);
    char *text = coord_slurp(path, NULL);
    const char *at = text ? strstr(text, "\nsteps ") : NULL;
    cr_assert(at, "no steps line in %s:\n%s", path, text ? text : "");
    unsigned long long n = strtoull(at + 7, NULL, 10);
    free(text);
    return n;
}

Test(coord_agent_run, agent_killed_mid_training_resumes_from_its_checkpoint) {
    validator v[2];
    serve_proc sp;
    round_with_crash(v, &sp, 21, "--steps 20 --batch 4 --dp --noise-multiplier 1.0", "NAWAL_AGENT_TEST_CRASH=train:10");
    validator_log_has(&v[1], "round 1: training\n");
    validator_log_has(&v[1], "exiting after the checkpoint at step 10");
    char ckpt[300], junk[300], orphan[300];
    snprintf(ckpt, sizeof ckpt, "%s/state/train.ckpt", v[1].key);
    cr_assert_eq(access(ckpt, F_OK), 0, "no snapshot at %s", ckpt);
    junk_file(&v[1], "train.ckpt.tmp.Ab12Cd", orphan, sizeof orphan); /* a save killed mid-way */
    /* agent a starts with a damaged snapshot in its state directory */
    snprintf(junk, sizeof junk, "%s/state", v[0].key);
    cr_assert_eq(mkdir(junk, 0700), 0);
    junk_file(&v[0], "train.ckpt", junk, sizeof junk);
    restart_both(v, &sp);
    validator_log_has(&v[1], "round 1: resuming local training at step 10 of 20 from the checkpoint");
    validator_log_has(&v[0], "round 1: checkpoint ");
    validator_log_has(&v[0], "removed, training from step 0");
    char *log = coord_slurp(v[0].log, NULL);
    cr_assert(log && !strstr(log, "resuming local training"), "agent a resumed from junk:\n%s", log ? log : "");
    free(log);
    /* every executed step charged once: the crash came right after the snapshot, nothing ran twice */
    cr_assert_eq(budget_steps(&v[1]), 20);
    cr_assert_eq(budget_steps(&v[0]), 20);
    cr_assert_neq(access(ckpt, F_OK), 0, "the snapshot outlived the update");
    cr_assert_neq(access(orphan, F_OK), 0, "the killed save's temporary file was not removed");
    cr_assert_neq(access(junk, F_OK), 0, "the damaged snapshot was not removed");
    round_closed_once(v, &sp);
}

Test(coord_agent_run, agent_killed_before_its_record_resumes_from_the_last_snapshot) {
    validator v[2];
    serve_proc sp;
    round_with_crash(v, &sp, 31, "--steps 6 --batch 4 --dp --noise-multiplier 1.0", "NAWAL_AGENT_TEST_CRASH=collect");
    validator_log_has(&v[1], "exiting before saving the submission record");
    char ckpt[300], sub[300];
    snprintf(ckpt, sizeof ckpt, "%s/state/train.ckpt", v[1].key);
    snprintf(sub, sizeof sub, "%s/state/submission", v[1].key);
    cr_assert_eq(access(ckpt, F_OK), 0, "the snapshot went before the submission record was saved");
    cr_assert_neq(access(sub, F_OK), 0, "a submission record was saved");
    cr_assert_eq(budget_steps(&v[1]), 6);
    restart_both(v, &sp);
    validator_log_has(&v[1], "round 1: resuming local training at step 6 of 6 from the checkpoint");
    cr_assert_eq(budget_steps(&v[1]), 6, "the round was trained (and charged) again");
    cr_assert_neq(access(ckpt, F_OK), 0, "the snapshot outlived the submission record");
    round_closed_once(v, &sp);
}

/* ---- a model patch that cannot be used ---------------------------------------- */

/* path (in a validator's state directory) of the cached model cid */
static void cached_model(const validator *v, const uint8_t cid[32], char *path, size_t cap) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    snprintf(path, cap, "%s/state/models/%s.safetensors", v->key, hex);
}

/* The file at path has exactly the bytes of the file at want. */
static void same_bytes(const char *path, const char *want) {
    size_t n = 0, m = 0;
    char *a = coord_slurp(path, &n), *b = coord_slurp(want, &m);
    cr_assert(a, "%s is missing", path);
    cr_assert(b, "%s is missing", want);
    cr_assert(n == m && !memcmp(a, b, n), "%s (%zu bytes) differs from %s (%zu bytes)", path, n, want, m);
    free(a);
    free(b);
}

static void validator_log_lacks(const validator *v, const char *text) {
    char *log = coord_slurp(v->log, NULL);
    cr_assert(log && !strstr(log, text), "agent %s: \"%s\" in its log:\n%s", v->name, text, log ? log : "");
    free(log);
}

Test(coord_agent_run, unusable_model_patch_falls_back_to_the_whole_model) {
    validator v[2];
    serve_proc sp;
    two_validator_round(v, &sp, 41, "--steps 6 --batch 4 --topk 0.01");
    for (int i = 0; i < 2; i++) validator_start(&v[i], sp.port, STAKE, NULL, NULL);
    for (int i = 0; i < 2; i++) validator_expect_exit(&v[i], 0, 180);

    /* round 1 closed and round 2 is open on its model, which the patch (round 1's base -> it) gives */
    char err[512] = "", mblob[4096], pblob[4096], h1[NAWAL_CID_HEX_BYTES], h2[NAWAL_CID_HEX_BYTES], line[200];
    nawal_store *s = NULL;
    cr_assert_eq(nawal_store_open(&s, g_dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    nawal_round r1, r2;
    cr_assert_eq(nawal_store_round_get(s, 1, &r1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_store_round_get(s, 2, &r2, err, sizeof err), 0, "round 2: %s", err);
    cr_assert(r1.state == NAWAL_ROUND_CLOSED && r1.has_model_cid, "round 1 is %s", nawal_round_state_name(r1.state));
    cr_assert(nawal_cid_equal(r2.base_cid, r1.model_cid), "round 2's base is not round 1's model");
    nawal_patch_row row;
    cr_assert_eq(nawal_patch_find(s, r2.base_cid, &row, err, sizeof err), 1, "no patch recorded for round 2's base %s", err);
    cr_assert(nawal_cid_equal(row.from_cid, r1.base_cid));
    cr_assert_eq(nawal_blobstore_path(s, r2.base_cid, mblob, sizeof mblob), 0);
    cr_assert_eq(nawal_blobstore_path(s, row.patch_cid, pblob, sizeof pblob), 0);
    nawal_store_close(s);
    nawal_cid_to_hex(h1, r1.base_cid);
    nawal_cid_to_hex(h2, r2.base_cid);
    /* the patch worked before: each agent built round 1's new model from it to evaluate it */
    snprintf(line, sizeof line, "round 1: model %.8s from a ", h2);
    for (int i = 0; i < 2; i++) validator_log_has(&v[i], line);

    /* the stored patch blob loses its CID (same length, its last byte flipped) */
    size_t plen = 0;
    char *patch = coord_slurp(pblob, &plen);
    cr_assert(patch && plen == row.patch_size && plen > 0, "patch blob %s", pblob);
    patch[plen - 1] ^= 0x5a;
    cr_assert_eq(chmod(pblob, 0644), 0, "%s", pblob);
    FILE *f = fopen(pblob, "wb");
    cr_assert(f && fwrite(patch, 1, plen, f) == plen && fclose(f) == 0, "%s", pblob);
    free(patch);
    /* both caches lose round 2's base (made for that evaluation); b's loses the from model too */
    char a_to[300], a_from[300], b_to[300], b_from[300];
    cached_model(&v[0], r2.base_cid, a_to, sizeof a_to);
    cached_model(&v[0], r1.base_cid, a_from, sizeof a_from);
    cached_model(&v[1], r2.base_cid, b_to, sizeof b_to);
    cached_model(&v[1], r1.base_cid, b_from, sizeof b_from);
    cr_assert_eq(unlink(a_to), 0, "%s", a_to);
    cr_assert_eq(unlink(b_to), 0, "%s", b_to);
    cr_assert_eq(unlink(b_from), 0, "%s", b_from);
    cr_assert_eq(access(a_from, F_OK), 0, "%s", a_from);

    /* round 2: a downloads the corrupt patch, says why it cannot use it and downloads the whole
     * model; b, without the from model, downloads the whole model straight away */
    for (int i = 0; i < 2; i++) validator_start(&v[i], sp.port, STAKE, NULL, NULL);
    for (int i = 0; i < 2; i++) validator_expect_exit(&v[i], 0, 180);
    snprintf(line, sizeof line, "round 2: the model patch for %.16s cannot be used (blob content ID mismatch", h2);
    validator_log_has(&v[0], line);
    validator_log_has(&v[0], "; downloading the whole model\n");
    validator_log_lacks(&v[1], "cannot be used");
    snprintf(line, sizeof line, "round 2: base model %.8s from a ", h2);
    for (int i = 0; i < 2; i++) {
        validator_log_lacks(&v[i], line);
        validator_log_has(&v[i], "round 2: base model downloaded in ");
        validator_log_has(&v[i], "round 2: update accepted");
        validator_log_has(&v[i], "round 2: closed: new model");
    }
    /* the cached bases are the coordinator's model, byte for byte; no patch file left behind */
    same_bytes(a_to, mblob);
    same_bytes(b_to, mblob);
    for (int i = 0; i < 2; i++) {
        char pdir[300];
        snprintf(pdir, sizeof pdir, "%s/state/patches", v[i].key);
        DIR *d = opendir(pdir);
        cr_assert(d, "%s", pdir);
        struct dirent *e;
        while ((e = readdir(d)))
            cr_assert(!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."), "agent %s left %s/%s", v[i].name, pdir,
                      e->d_name);
        closedir(d);
    }
    serve_stop_clean(&sp);
    check_round_id(2, v, 2);
    coord_sh(g_root, "%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}

/* ---- the model download's paths ------------------------------------------------ */

/* An agent whose blob token is refused (NAWAL_AGENT_TEST_BAD_BLOB_TOKEN) says so and downloads the
 * base model over BlobRequest (a GET cut mid-body: the next test); the other gets it over HTTP; both
 * caches hold the coordinator's model byte for byte. With serve --no-blob-http, BlobRequest only. */
Test(coord_agent_run, model_download_over_http_or_blob_request) {
    validator v[2];
    serve_proc sp;
    two_validator_round(v, &sp, 51, "--steps 4 --batch 4");
    validator_start(&v[0], sp.port, STAKE, NULL, NULL);
    validator_start(&v[1], sp.port, STAKE, NULL, "NAWAL_AGENT_TEST_BAD_BLOB_TOKEN=1");
    for (int i = 0; i < 2; i++) validator_expect_exit(&v[i], 0, 180);
    validator_log_has(&v[0], " s (HTTP)\n");
    validator_log_lacks(&v[0], "HTTP download failed");
    validator_log_has(&v[1], "warning: round 1: HTTP download failed (HTTP status 401); continuing over BlobRequest");
    validator_log_has(&v[1], " s (BlobRequest)\n");
    char *slog = coord_slurp(sp.log, NULL);
    cr_assert(slog && strstr(slog, "event=blob_http_refused reason=token"), "serve logged no refusal:\n%s", slog ? slog : "");
    free(slog);
    serve_stop_clean(&sp);
    check_round(v, 2);

    nawal_store *s = coord_open(g_dir);
    char err[512] = "", mblob[4096], path[300];
    nawal_round r1;
    cr_assert_eq(nawal_store_round_get(s, 1, &r1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blobstore_path(s, r1.base_cid, mblob, sizeof mblob), 0);
    nawal_store_close(s);
    for (int i = 0; i < 2; i++) {
        cached_model(&v[i], r1.base_cid, path, sizeof path);
        same_bytes(path, mblob);
    }

    /* serve --no-blob-http: no token, the next round's base over BlobRequest, no GET tried */
    char log[200];
    snprintf(log, sizeof log, "%s/serve2.log", g_root);
    serve_start_at(&sp, g_dir, log, "--insecure-plaintext --no-blob-http");
    cached_model(&v[0], r1.base_cid, path, sizeof path);
    cr_assert_eq(unlink(path), 0, "%s", path); /* no patch base: the whole model comes */
    cr_assert(r1.has_model_cid);
    cached_model(&v[0], r1.model_cid, path, sizeof path); /* round 2's base, cached for round 1's evaluation */
    cr_assert_eq(unlink(path), 0, "%s", path);
    validator_start(&v[0], sp.port, STAKE, NULL, NULL);
    validator_start(&v[1], sp.port, STAKE, NULL, NULL);
    for (int i = 0; i < 2; i++) validator_expect_exit(&v[i], 0, 180);
    serve_stop_clean(&sp);
    char *a = coord_slurp(v[0].log, NULL);
    const char *r2 = a ? strstr(a, "round 2: base model") : NULL;
    cr_assert(r2, "agent a never got round 2's base model:\n%s", a ? a : "");
    cr_assert(strstr(r2, "s (BlobRequest)\n") && !strstr(r2, "HTTP download failed"), "round 2 without tokens:\n%s", r2);
    free(a);
}

/* A GET cut mid-body (NAWAL_SERVE_TEST_HTTP_CUT) is resumed over BlobRequest from where it stopped,
 * not from 0; the cached base is the coordinator's model byte for byte. */
Test(coord_agent_run, model_download_cut_mid_body_resumes_over_blob_request) {
    coord_sh(g_root, "%s init --dir %s --model-config 2,4,256,128,4096", NAWAL_COORDINATOR_BIN, g_dir); /* ~10 MB */
    validator v[1];
    validator_new(&v[0], "a", 61);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 1 --min 1 --deadline-s 240 --join-window-s 120 "
             "--steps 1 --batch 1", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    char log[200];
    snprintf(log, sizeof log, "%s/serve.log", g_root);
    serve_start_env(&sp, g_dir, log, "--insecure-plaintext --log-level debug", "NAWAL_SERVE_TEST_HTTP_CUT=300000");
    validator_start(&v[0], sp.port, STAKE, NULL, NULL);
    validator_expect_exit(&v[0], 0, 240);
    serve_stop_clean(&sp);
    validator_log_has(&v[0], "HTTP download failed (connection closed after ");
    validator_log_has(&v[0], "; continuing over BlobRequest");
    validator_log_has(&v[0], " s (BlobRequest)\n");
    /* the BlobRequest asked from where the body stopped */
    char *slog = coord_slurp(sp.log, NULL);
    const char *at = slog ? strstr(slog, "event=blob_request") : NULL;
    cr_assert(at, "no blob_request in serve's log:\n%s", slog ? slog : "");
    at = strstr(at, " offset=");
    cr_assert(at && strtoull(at + 8, NULL, 10) >= 300000, "BlobRequest not resumed: %.80s", at ? at : "");
    free(slog);
    nawal_store *s = coord_open(g_dir);
    char err[512] = "", mblob[4096], path[300];
    nawal_round r1;
    cr_assert_eq(nawal_store_round_get(s, 1, &r1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blobstore_path(s, r1.base_cid, mblob, sizeof mblob), 0);
    nawal_store_close(s);
    cached_model(&v[0], r1.base_cid, path, sizeof path);
    same_bytes(path, mblob);
}
