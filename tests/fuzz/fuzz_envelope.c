/* fuzz_envelope.c - libFuzzer target for nawal_envelope_open(), the first
 * code that sees bytes from the network.
 *
 * Each input is used twice:
 *   1. as an encoded envelope, opened with a fixed policy (32 KiB limit so
 *      the size check fires too, a fixed clock, any sender allowed) and a
 *      fresh peer state: the result must be 0 or a Nawal__ErrorCode with a
 *      message; a refusal must leave the peer state and the view untouched;
 *      an accepted envelope must be refused as a replay when opened again;
 *   2. as the material of a sealed envelope (byte 0: type, bytes 1..8:
 *      sequence, 9..10: clock offset, 11..12: a byte to alter, the rest:
 *      payload), signed with a fixed key and opened: it must be accepted
 *      exactly when the type is known, the sequence is not 0, the timestamp
 *      lies in the window and the size in the limit, with every field
 *      intact; altering any one byte of it must never yield an accepted
 *      envelope that says something else.
 * Seeds: tests/fuzz/corpus/envelope/. */
#include "envelope.h"
#include "fuzz_util.h"

#define NOW ((uint64_t)1750000000000ull)
#define MAX_BYTES ((size_t)32 << 10)

static uint64_t fixed_now(void *ctx) {
    (void)ctx;
    return NOW;
}

static int anyone(const uint8_t sender[NAWAL_PUBKEY_BYTES], void *ctx) {
    (void)sender;
    (void)ctx;
    return 1;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int open_fresh(const uint8_t *buf, size_t len, const nawal_envelope_policy *pol, nawal_envelope_view *v) {
    nawal_peer_state peer = { 0 };
    char err[512] = "";
    int rc = nawal_envelope_open(buf, len, pol, &peer, v, err, sizeof err);
    FUZZ_CHECK(rc >= 0 && rc < NAWAL__ERROR_CODE__ERR_INTERNAL, "result is 0 or a peer-caused error code");
    if (rc) {
        FUZZ_CHECK(err[0], "refusal has a message");
        FUZZ_CHECK(peer.last_sequence == 0 && !peer.has_sender, "refusal leaves the peer state alone");
        FUZZ_CHECK(v->decoded_ == NULL && v->payload == NULL, "refusal leaves no view");
        return rc;
    }
    FUZZ_CHECK(nawal_msg_descriptor(v->type) != NULL, "accepted type is known");
    FUZZ_CHECK(v->sequence >= 1 && peer.last_sequence == v->sequence, "peer advanced to the sequence");
    FUZZ_CHECK(peer.has_sender && memcmp(peer.sender, v->sender, NAWAL_PUBKEY_BYTES) == 0, "sender pinned");
    FUZZ_CHECK(v->payload_len < len, "payload inside the envelope");
    nawal_envelope_view again;
    FUZZ_CHECK(nawal_envelope_open(buf, len, pol, &peer, &again, err, sizeof err) == NAWAL__ERROR_CODE__ERR_REPLAY,
               "second open is a replay");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static nawal_identity id;
    static int have_id;
    if (!have_id) {
        uint8_t seed[32] = { 'n', 'a', 'w', 'a', 'l', '-', 'f', 'u', 'z', 'z' };
        FUZZ_CHECK(nawal_identity_from_seed(&id, seed, NULL, 0) == 0, "fixed identity");
        have_id = 1;
    }
    nawal_envelope_policy pol;
    nawal_envelope_policy_default(&pol);
    pol.max_message_bytes = MAX_BYTES;
    pol.now_ms = fixed_now;
    pol.is_known = anyone;

    /* 1. arbitrary bytes */
    nawal_envelope_view v;
    if (open_fresh(data, size, &pol, &v) == 0) nawal_envelope_view_free(&v);

    /* 2. sealed from the input */
    if (size < 13) return 0;
    uint32_t type = data[0] % 16;
    uint64_t seq = le(data + 1, 8);
    uint64_t ts = NOW + (uint64_t)((int64_t)(int16_t)le(data + 9, 2) * 16); /* +-524 s around NOW */
    size_t alter = (size_t)le(data + 11, 2);
    const uint8_t *payload = data + 13;
    size_t plen = size - 13;
    uint8_t *env = NULL;
    size_t elen = 0;
    char err[512] = "";
    int rc = nawal_envelope_seal(&id, type, seq, ts, payload, plen, &env, &elen, err, sizeof err);
    FUZZ_CHECK((rc == 0) == (nawal_msg_descriptor(type) != NULL && seq != 0), "seal fails only on bad arguments");
    if (rc) {
        FUZZ_CHECK(err[0] && env == NULL, "seal failure has a message and no output");
        return 0;
    }
    uint64_t skew = ts > NOW ? ts - NOW : NOW - ts;
    int want_ok = skew <= pol.max_clock_skew_ms && elen <= MAX_BYTES;
    rc = open_fresh(env, elen, &pol, &v);
    FUZZ_CHECK((rc == 0) == want_ok, "a sealed envelope is accepted exactly when fresh and small enough");
    if (rc == 0) {
        FUZZ_CHECK(v.type == type && v.sequence == seq && v.timestamp_ms == ts && v.version == 1, "fields intact");
        FUZZ_CHECK(memcmp(v.sender, id.pk, NAWAL_PUBKEY_BYTES) == 0, "sender intact");
        FUZZ_CHECK(v.payload_len == plen && (plen == 0 || memcmp(v.payload, payload, plen) == 0), "payload intact");
        nawal_envelope_view_free(&v);
        /* one altered byte: refused, or (if protobuf allowed an equivalent
         * re-encoding) accepted with exactly the same meaning */
        size_t at = alter % elen;
        env[at] ^= (uint8_t)(data[0] | 1);
        if (open_fresh(env, elen, &pol, &v) == 0) {
            FUZZ_CHECK(v.type == type && v.sequence == seq && v.timestamp_ms == ts, "altered envelope kept its fields");
            FUZZ_CHECK(memcmp(v.sender, id.pk, NAWAL_PUBKEY_BYTES) == 0, "altered envelope kept its sender");
            FUZZ_CHECK(v.payload_len == plen && (plen == 0 || memcmp(v.payload, payload, plen) == 0),
                       "altered envelope kept its payload");
            nawal_envelope_view_free(&v);
        }
    } else {
        FUZZ_CHECK(rc == (elen > MAX_BYTES ? NAWAL__ERROR_CODE__ERR_TOO_LARGE : NAWAL__ERROR_CODE__ERR_REPLAY),
                   "stale or oversize sealed envelope refused for that reason");
    }
    free(env);
    return 0;
}
