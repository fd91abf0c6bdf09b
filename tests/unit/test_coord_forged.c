/* test_coord_forged.c - forged messages against `nawal-coordinator serve`
 * while a round runs with honest agents. The coordinator (a child process,
 * loopback plaintext) has a tiny model and three registered validators: two
 * honest `nawal-agent run --rounds 1` processes (a, b) and a malicious one
 * (C), scripted here on proto/'s client (ws_client_test_util.h), each attack
 * on its own connection:
 *   - forged Hellos from a key that is not registered: one naming C's public
 *     key while signed (and sent) by the forger (ERR_BAD_MESSAGE), one whose
 *     envelope claims C as its sender under the forger's signature
 *     (ERR_BAD_SIGNATURE); both disconnected;
 *   - C, with its key, joins round 1 (before the honest agents start, so the
 *     round has 3 joined and closes at its deadline with 2 updates), then
 *     submits an UpdateSubmit whose uploaded bytes are not the announced
 *     delta CID (a tampered delta: ERR_BAD_MESSAGE from the CID check,
 *     nothing stored under that CID), and, on another connection, a signed
 *     UpdateSubmit altered after signing (ERR_BAD_SIGNATURE, disconnected,
 *     nothing asked for upload);
 *   - replays of C's captured envelopes: its Hello and Auth replayed
 *     verbatim on a new connection (a fresh challenge, so the old Auth gets
 *     ERR_REPLAY), and, in a new authenticated session of C's, its earlier
 *     UpdateSubmit envelope with its old sequence number (ERR_REPLAY);
 *     both disconnected.
 * Then: both agents exit 0 having seen "2 updates accepted (ours
 * included)"; round 1 is closed with a new model, exactly a's and b's
 * updates recorded and only they paid (summing to the pool); the ledger
 * verifies. */
#include "coord_proc_test_util.h"
#include "coord_test_util.h"
#include "ws_client_test_util.h"

#include <sqlite3.h>

#define MODEL "1,2,32,32,257"
#define STAKE "1000000000000"
#define STAKE_N 1000000000000ull
#define POOL 1000000000000ull
/* C joins before a and b start; the round then waits for its deadline:
 * long enough for C's attacks and for two agents to download, train 8
 * steps and upload (well under a second each here) on a busy 2-core
 * machine, sanitizer builds included. */
#define DEADLINE_S 10

static char g_root[128], g_dir[160];

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "forged");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_forged, .init = setup, .fini = teardown, .timeout = 240);

/* An envelope as sent on the wire, kept for a replay. */
typedef struct {
    uint8_t *buf;
    size_t n;
    uint64_t seq;
} captured;

/* Seals msg as a's next envelope, sends it and keeps a copy. */
static void send_captured(agent *a, uint32_t type, const ProtobufCMessage *msg, captured *c) {
    c->seq = agent_seal(a, type, msg, &c->buf, &c->n);
    agent_send_raw(a, c->buf, c->n);
}

/* Agent sequences as `nawal-agent run` makes them: time-based (Unix us), so they grow across sessions. */
static void time_based_seq(agent *a) { a->seq = nawal_now_ms() * 1000; }

/* A signed envelope re-encoded after a change: sender (when set) replaced, payload byte k (when >= 0) flipped. */
static void envelope_alter(const uint8_t *in, size_t n, const uint8_t *sender, long k, uint8_t **out, size_t *outn) {
    Nawal__Envelope *e = nawal__envelope__unpack(NULL, n, in);
    cr_assert(e, "our own envelope decodes");
    uint8_t *orig_sender = e->sender.data, *orig_payload = e->payload.data, pk[32], *payload = NULL;
    if (sender) {
        memcpy(pk, sender, 32);
        e->sender.data = pk;
    }
    if (k >= 0) {
        cr_assert((size_t)k < e->payload.len);
        payload = malloc(e->payload.len);
        memcpy(payload, e->payload.data, e->payload.len);
        payload[k] ^= 0x01;
        e->payload.data = payload;
    }
    *outn = nawal__envelope__get_packed_size(e);
    *out = malloc(*outn);
    cr_assert_eq(nawal__envelope__pack(e, *out), *outn);
    e->sender.data = orig_sender; /* the unpacker's own, freed with it */
    e->payload.data = orig_payload;
    free(payload);
    nawal__envelope__free_unpacked(e, NULL);
}

/* The rewards rows of a round, read straight from the database. */
static size_t round_rewards(nawal_store *s, int64_t round, uint8_t (*who)[32], uint64_t *amount, size_t cap) {
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "SELECT validator, amount_planck FROM rewards WHERE round_id = ?",
                                    -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, round);
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        cr_assert(n < cap);
        cr_assert_eq(sqlite3_column_bytes(st, 0), 32);
        memcpy(who[n], sqlite3_column_blob(st, 0), 32);
        amount[n] = strtoull((const char *)sqlite3_column_text(st, 1), NULL, 10);
        n++;
    }
    sqlite3_finalize(st);
    return n;
}

Test(coord_forged, forged_updates_refused_round_completes_with_honest_agents) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v[2];
    validator_make(&v[0], g_root, g_dir, "a", STAKE, 21);
    validator_make(&v[1], g_root, g_dir, "b", STAKE, 22);
    nawal_identity cid_key, forger; /* C (registered, malicious) and a key nobody registered */
    agent_key(&cid_key, 'C');
    agent_key(&forger, 'M');
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, cid_key.pk);
    coord_sh(g_root, "%s validator add --dir %s --pubkey %s --stake " STAKE, NAWAL_COORDINATOR_BIN, g_dir, fp);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 3 --min 2 --deadline-s %d --join-window-s 8 "
             "--steps 8 --batch 4 --lr 0.003", NAWAL_COORDINATOR_BIN, g_dir, POOL, DEADLINE_S);
    serve_proc sp;
    char slog[200];
    snprintf(slog, sizeof slog, "%s/serve.log", g_root);
    serve_start_at(&sp, g_dir, slog, "--insecure-plaintext");

    /* (1) forged Hellos from an unregistered key */
    agent m;
    agent_connect_as(&m, &forger, g_dir, sp.port, NULL, 0);
    send_hello(&m, cid_key.pk); /* signed by the forger, naming C's key */
    expect_error(&m, ERRC(BAD_MESSAGE));
    expect_closed(&m);
    agent_free(&m);
    agent_connect_as(&m, &forger, g_dir, sp.port, NULL, 0);
    {   /* the envelope claims C as its sender; the signature is the forger's */
        Nawal__Hello h = NAWAL__HELLO__INIT;
        h.version = NAWAL__VERSION__PROTOCOL_VERSION;
        h.software = "forger";
        h.pubkey.data = cid_key.pk;
        h.pubkey.len = 32;
        uint8_t *buf, *forged;
        size_t n, fn;
        agent_seal(&m, MSG(HELLO), &h.base, &buf, &n);
        envelope_alter(buf, n, cid_key.pk, -1, &forged, &fn);
        agent_send_raw(&m, forged, fn);
        free(buf);
        free(forged);
    }
    expect_error(&m, ERRC(BAD_SIGNATURE));
    expect_closed(&m);
    cr_assert_eq(m.nq, 0, "no Challenge for a forger");
    agent_free(&m);

    /* (2) C joins with its own key (Hello, Auth and Join kept for replays) */
    agent c;
    agent_connect_as(&c, &cid_key, g_dir, sp.port, NULL, 0);
    time_based_seq(&c);
    captured hello, auth, join, update;
    {
        Nawal__Hello h = NAWAL__HELLO__INIT;
        h.version = NAWAL__VERSION__PROTOCOL_VERSION;
        h.software = "malicious";
        h.pubkey.data = cid_key.pk;
        h.pubkey.len = 32;
        send_captured(&c, MSG(HELLO), &h.base, &hello);
    }
    uint8_t nonce1[32];
    {
        in_msg im = agent_next(&c, MSG(CHALLENGE), 10);
        Nawal__Challenge *ch = unpack(&im);
        cr_assert_eq(ch->nonce.len, 32);
        memcpy(nonce1, ch->nonce.data, 32);
        Nawal__Auth au = NAWAL__AUTH__INIT;
        au.nonce = ch->nonce;
        send_captured(&c, MSG(AUTH), &au.base, &auth);
        nawal_msg_free(&ch->base);
        free(im.payload);
    }
    expect_ack(&c, auth.seq);
    in_msg im = agent_next(&c, MSG(ROUND_ANNOUNCE), 10);
    Nawal__RoundAnnounce *ra = unpack(&im);
    free(im.payload);
    cr_assert_eq(ra->round_id, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    nawal_msg_free(&ra->base);
    {
        Nawal__Join j = NAWAL__JOIN__INIT;
        j.round_id = 1;
        j.stake_planck = STAKE_N;
        send_captured(&c, MSG(JOIN), &j.base, &join);
    }
    expect_ack(&c, join.seq);

    /* the honest agents start now: C has joined, so the round waits for its deadline */
    double t_agents = wt_now();
    for (int i = 0; i < 2; i++) validator_start(&v[i], sp.port, STAKE, NULL, NULL);

    /* (2) a tampered delta: the bytes uploaded are not the CID the UpdateSubmit names */
    char base_path[300], dpath[300], tpath[300];
    snprintf(base_path, sizeof base_path, "%s/base.safetensors", g_root);
    snprintf(dpath, sizeof dpath, "%s/delta.safetensors", g_root);
    snprintf(tpath, sizeof tpath, "%s/tampered.safetensors", g_root);
    download(&c, base, base_path);
    uint8_t dcid[32];
    uint64_t dsize = make_delta(base_path, dpath, 5, dcid);
    size_t tn;
    uint8_t *bytes = (uint8_t *)coord_slurp(dpath, &tn);
    cr_assert(bytes && tn == dsize);
    bytes[tn - 3] ^= 0x10; /* one weight changed after the CID was computed */
    FILE *f = fopen(tpath, "wb");
    cr_assert(f && fwrite(bytes, 1, tn, f) == tn);
    fclose(f);
    free(bytes);
    snprintf(c.up_path, sizeof c.up_path, "%s", tpath);
    memcpy(c.up_cid, dcid, 32); /* served under the announced CID */
    {
        Nawal__Metrics mt = NAWAL__METRICS__INIT;
        mt.train_loss = 0.1f; /* and a suspiciously good loss */
        Nawal__UpdateSubmit u = NAWAL__UPDATE_SUBMIT__INIT;
        u.round_id = 1;
        u.base_cid.data = base;
        u.base_cid.len = 32;
        u.num_examples = 100000;
        u.metrics = &mt;
        u.delta_cid.data = dcid;
        u.delta_cid.len = 32;
        u.delta_size = dsize;
        u.quality = 1.0f;
        send_captured(&c, MSG(UPDATE_SUBMIT), &u.base, &update);
    }
    expect_error_saying(&c, ERRC(BAD_MESSAGE), "content ID mismatch");
    cr_assert_eq(c.up_requests, 1, "the coordinator asked for the delta once");
    cr_assert(!c.closed, "an update refusal leaves the connection open");
    cr_assert_eq(c.bad_envelopes, 0);
    agent_free(&c);

    /* ... and a signed UpdateSubmit altered after signing (C's new session, the real delta's CID) */
    agent_connect_as(&c, &cid_key, g_dir, sp.port, NULL, 0);
    time_based_seq(&c);
    ra = handshake(&c, 1);
    nawal_msg_free(&ra->base);
    snprintf(c.up_path, sizeof c.up_path, "%s", dpath);
    memcpy(c.up_cid, dcid, 32);
    {
        Nawal__UpdateSubmit u = NAWAL__UPDATE_SUBMIT__INIT;
        u.round_id = 1;
        u.base_cid.data = base;
        u.base_cid.len = 32;
        u.num_examples = 100;
        u.delta_cid.data = dcid;
        u.delta_cid.len = 32;
        u.delta_size = dsize;
        u.quality = 0.5f;
        uint8_t *buf, *forged;
        size_t n, fn;
        agent_seal(&c, MSG(UPDATE_SUBMIT), &u.base, &buf, &n);
        envelope_alter(buf, n, NULL, 40, &forged, &fn); /* a byte of the delta CID */
        agent_send_raw(&c, forged, fn);
        free(buf);
        free(forged);
    }
    expect_error(&c, ERRC(BAD_SIGNATURE));
    expect_closed(&c);
    cr_assert_eq(c.up_requests, 0, "nothing uploaded for a forged UpdateSubmit");
    agent_free(&c);

    /* (3) replays: C's Hello and Auth on a new connection meet a fresh challenge */
    agent r;
    agent_connect_as(&r, &forger, g_dir, sp.port, NULL, 0);
    agent_send_raw(&r, hello.buf, hello.n);
    im = agent_next(&r, MSG(CHALLENGE), 10);
    Nawal__Challenge *ch = unpack(&im);
    cr_assert(ch->nonce.len == 32 && memcmp(ch->nonce.data, nonce1, 32), "a new connection gets a new nonce");
    nawal_msg_free(&ch->base);
    free(im.payload);
    agent_send_raw(&r, auth.buf, auth.n);
    expect_error(&r, ERRC(REPLAY));
    expect_closed(&r);
    agent_free(&r);

    /* ... and C's earlier UpdateSubmit, same sequence number, in a later session of C's */
    agent_connect_as(&c, &cid_key, g_dir, sp.port, NULL, 0);
    time_based_seq(&c);
    ra = handshake(&c, 1);
    nawal_msg_free(&ra->base);
    cr_assert(c.seq > update.seq);
    snprintf(c.up_path, sizeof c.up_path, "%s", tpath);
    memcpy(c.up_cid, dcid, 32);
    agent_send_raw(&c, update.buf, update.n);
    expect_error(&c, ERRC(REPLAY));
    expect_closed(&c);
    cr_assert_eq(c.up_requests, 0, "nothing asked for upload for a replayed UpdateSubmit");
    agent_free(&c);
    /* the Join too, for good measure, on the same terms */
    agent_connect_as(&c, &cid_key, g_dir, sp.port, NULL, 0);
    time_based_seq(&c);
    ra = handshake(&c, 1);
    nawal_msg_free(&ra->base);
    agent_send_raw(&c, join.buf, join.n);
    expect_error(&c, ERRC(REPLAY));
    expect_closed(&c);
    agent_free(&c);
    captured *all[] = { &hello, &auth, &join, &update };
    for (size_t i = 0; i < 4; i++) free(all[i]->buf);

    /* the round closes at its deadline with the honest agents */
    for (int i = 0; i < 2; i++) validator_expect_exit(&v[i], 0, DEADLINE_S + 60);
    for (int i = 0; i < 2; i++) {
        validator_log_has(&v[i], "round 1: update accepted");
        validator_log_has(&v[i], "round 1: closed: new model");
        validator_log_has(&v[i], "2 updates accepted (ours included)");
    }
    cr_log_info("agents done %.1f s after they started", wt_now() - t_agents);
    serve_stop_clean(&sp);

    nawal_store *s = coord_open(g_dir);
    char err[512] = "";
    nawal_round rd;
    cr_assert_eq(nawal_store_round_get(s, 1, &rd, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rd.state, NAWAL_ROUND_CLOSED, "round 1 is %s, not closed", nawal_round_state_name(rd.state));
    cr_assert(rd.has_model_cid && !nawal_cid_equal(rd.model_cid, rd.base_cid), "round 1 made a new model");
    nawal_submission *subs = NULL;
    size_t ns = 0;
    cr_assert_eq(nawal_store_submissions(s, 1, &subs, &ns, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ns, 2, "%zu updates recorded, expected the 2 honest ones", ns);
    for (size_t j = 0; j < ns; j++) {
        cr_assert(memcmp(subs[j].validator, cid_key.pk, 32), "C's update was recorded");
        cr_assert(!nawal_cid_equal(subs[j].delta_cid, dcid));
    }
    for (int i = 0; i < 2; i++) {
        int seen = 0;
        for (size_t j = 0; j < ns; j++) seen += !memcmp(subs[j].validator, v[i].pk, 32);
        cr_assert_eq(seen, 1, "validator %s has %d updates recorded", v[i].name, seen);
    }
    free(subs);
    cr_assert(!nawal_blobstore_has(s, dcid), "nothing stored under the tampered delta's CID");
    uint8_t who[8][32];
    uint64_t amount[8], paid = 0;
    size_t nr = round_rewards(s, 1, who, amount, 8);
    cr_assert_eq(nr, 2, "%zu validators paid, expected the 2 honest ones", nr);
    for (size_t j = 0; j < nr; j++) {
        cr_assert(memcmp(who[j], cid_key.pk, 32), "C was paid");
        cr_assert(!memcmp(who[j], v[0].pk, 32) || !memcmp(who[j], v[1].pk, 32));
        paid += amount[j];
    }
    cr_assert_eq(paid, POOL, "the honest agents share the pool");
    nawal_store_close(s);
    coord_sh(g_root, "%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}
