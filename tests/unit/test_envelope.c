/* test_envelope.c - signed envelopes and message encoding (proto/envelope.h):
 * a round trip of every MsgType with every field filled at random (walking
 * the protobuf-c descriptors, so fields added to nawal.proto are covered
 * without touching this file); each tampered field refused with the right
 * Nawal__ErrorCode; replays and stale or future timestamps refused; the
 * size limit enforced before a byte is read; unknown types refused and
 * unknown fields ignored; garbage refused as ERR_BAD_MESSAGE; and the
 * signature checked against the documented signed encoding, rebuilt here
 * independently. */
#include "envelope.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <sodium.h>
#include <string.h>

#define E(x) NAWAL__ERROR_CODE__ERR_##x
#define T(x) NAWAL__MSG_TYPE__MSG_##x
#define FIRST_TYPE 1
#define LAST_TYPE 14
#define NOW ((uint64_t)1750000000000ull)

/* --- random messages from descriptors ----------------------------------- */

static size_t elem_size(const ProtobufCFieldDescriptor *f) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32: return sizeof(uint32_t);
    case PROTOBUF_C_TYPE_UINT64: return sizeof(uint64_t);
    case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM: return sizeof(int);
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    default: cr_assert_fail("field %s: type %d not handled by this test", f->name, (int)f->type); return 0;
    }
}

static ProtobufCMessage *random_msg(const ProtobufCMessageDescriptor *d, uint64_t *s, int depth);

static void random_value(const ProtobufCFieldDescriptor *f, void *p, uint64_t *s, int depth, int must_exist) {
    int zero = test_rand_int(s, 6) == 0; /* proto3 defaults must survive too */
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32: *(uint32_t *)p = zero ? 0 : (uint32_t)(test_rand_u64(s) >> test_rand_int(s, 32)); break;
    case PROTOBUF_C_TYPE_UINT64: *(uint64_t *)p = zero ? 0 : test_rand_u64(s) >> test_rand_int(s, 64); break;
    case PROTOBUF_C_TYPE_FLOAT: *(float *)p = zero ? 0.f : test_rand_normal(s) * 1000.f; break;
    case PROTOBUF_C_TYPE_DOUBLE: *(double *)p = zero ? 0.0 : (double)test_rand_normal(s) * 1e-3 + test_rand_unit(s); break;
    case PROTOBUF_C_TYPE_BOOL: *(protobuf_c_boolean *)p = zero ? 0 : (int)(test_rand_u64(s) & 1); break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        *(int *)p = ed->values[test_rand_int(s, (int)ed->n_values)].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        size_t n = zero ? 0 : (size_t)test_rand_int(s, 40);
        char *str = malloc(n + 1);
        for (size_t i = 0; i < n; i++) str[i] = (char)(' ' + test_rand_int(s, 95));
        str[n] = 0;
        *(char **)p = str;
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        b->len = zero ? 0 : (size_t)test_rand_int(s, 80);
        b->data = b->len ? malloc(b->len) : NULL;
        for (size_t i = 0; i < b->len; i++) b->data[i] = (uint8_t)test_rand_u64(s);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)p = (must_exist || (depth < 3 && !zero)) ? random_msg(f->descriptor, s, depth + 1) : NULL;
        break;
    default: cr_assert_fail("unhandled type");
    }
}

static ProtobufCMessage *random_msg(const ProtobufCMessageDescriptor *d, uint64_t *s, int depth) {
    ProtobufCMessage *m = malloc(d->sizeof_message);
    cr_assert(m);
    protobuf_c_message_init(d, m);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        char *p = (char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = (size_t)test_rand_int(s, 5), es = elem_size(f);
            *(size_t *)((char *)m + f->quantifier_offset) = n;
            char *arr = n ? malloc(n * es) : NULL;
            *(void **)p = arr;
            for (size_t k = 0; k < n; k++) random_value(f, arr + k * es, s, depth, 1);
        } else {
            cr_assert_eq(f->label, PROTOBUF_C_LABEL_NONE, "proto3 fields only");
            random_value(f, p, s, depth, 0);
        }
    }
    return m;
}

static int msg_equal(const ProtobufCMessage *a, const ProtobufCMessage *b);

static int value_equal(const ProtobufCFieldDescriptor *f, const void *a, const void *b) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: return strcmp(*(char *const *)a, *(char *const *)b) == 0;
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *x = a, *y = b;
        return x->len == y->len && (x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
    }
    case PROTOBUF_C_TYPE_MESSAGE: return msg_equal(*(ProtobufCMessage *const *)a, *(ProtobufCMessage *const *)b);
    default: return memcmp(a, b, elem_size(f)) == 0; /* floats compared bit for bit */
    }
}

static int msg_equal(const ProtobufCMessage *a, const ProtobufCMessage *b) {
    if (!a || !b) return a == b;
    if (a->descriptor != b->descriptor) return 0;
    const ProtobufCMessageDescriptor *d = a->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t na = *(const size_t *)((const char *)a + f->quantifier_offset);
            size_t nb = *(const size_t *)((const char *)b + f->quantifier_offset);
            if (na != nb) return 0;
            size_t es = elem_size(f);
            for (size_t k = 0; k < na; k++)
                if (!value_equal(f, *(char *const *)pa + k * es, *(char *const *)pb + k * es)) return 0;
        } else if (!value_equal(f, pa, pb)) {
            return 0;
        }
    }
    return 1;
}

/* --- helpers ------------------------------------------------------------ */

static uint64_t fixed_clock(void *ctx) { return *(const uint64_t *)ctx; }
static uint64_t clock_now = NOW;
static const uint8_t *known_key;
static int only_known(const uint8_t sender[NAWAL_PUBKEY_BYTES], void *ctx) {
    (void)ctx;
    return memcmp(sender, known_key, NAWAL_PUBKEY_BYTES) == 0;
}

static nawal_envelope_policy policy(void) {
    nawal_envelope_policy p;
    nawal_envelope_policy_default(&p);
    p.now_ms = fixed_clock;
    p.ctx = &clock_now;
    return p;
}

static nawal_identity identity(uint64_t *s) {
    uint8_t seed[32];
    for (int i = 0; i < 32; i++) seed[i] = (uint8_t)test_rand_u64(s);
    nawal_identity id;
    cr_assert_eq(nawal_identity_from_seed(&id, seed, NULL, 0), 0);
    return id;
}

static void seal(const nawal_identity *id, uint32_t type, uint64_t seq, uint64_t ts, const uint8_t *p, size_t n,
                 uint8_t **out, size_t *len) {
    char err[256] = "";
    cr_assert_eq(nawal_envelope_seal(id, type, seq, ts, p, n, out, len, err, sizeof err), 0, "%s", err);
}

/* open with a fresh peer state; returns the code, frees the view */
static int open_fresh(const uint8_t *buf, size_t len, const nawal_envelope_policy *pol, char *err, size_t errlen) {
    nawal_peer_state peer = { 0 };
    nawal_envelope_view v;
    int rc = nawal_envelope_open(buf, len, pol, &peer, &v, err, errlen);
    if (rc == 0) cr_assert_eq(peer.last_sequence, v.sequence);
    else {
        cr_assert_eq(peer.last_sequence, 0, "peer state advanced on a refusal");
        cr_assert_eq(v.decoded_, NULL);
    }
    nawal_envelope_view_free(&v);
    return rc;
}

/* Decodes a sealed envelope, lets `edit` change it, re-encodes. */
static void reencode(const uint8_t *buf, size_t len, void (*edit)(Nawal__Envelope *, void *), void *arg,
                     uint8_t **out, size_t *out_len) {
    Nawal__Envelope *e = nawal__envelope__unpack(NULL, len, buf);
    cr_assert(e);
    edit(e, arg);
    *out_len = nawal__envelope__get_packed_size(e);
    *out = malloc(*out_len ? *out_len : 1);
    nawal__envelope__pack(e, *out);
    nawal__envelope__free_unpacked(e, NULL);
}

/* --- tests -------------------------------------------------------------- */

Test(envelope, round_trip_every_type) {
    uint64_t s = test_seed("envelope.round_trip");
    nawal_identity id = identity(&s);
    nawal_envelope_policy pol = policy();
    nawal_peer_state peer = { 0 };
    uint64_t seq = 0;
    char err[512] = "";
    for (uint32_t type = FIRST_TYPE; type <= LAST_TYPE; type++) {
        const ProtobufCMessageDescriptor *d = nawal_msg_descriptor(type);
        cr_assert(d, "no descriptor for type %u", type);
        cr_assert(nawal_msg_type_name(type));
        for (int trial = 0; trial < 25; trial++) {
            ProtobufCMessage *m = random_msg(d, &s, 0);
            uint8_t *payload, *env;
            size_t plen, elen;
            cr_assert_eq(nawal_msg_pack(type, m, &payload, &plen, err, sizeof err), 0, "%s", err);
            seq += 1 + (uint64_t)test_rand_int(&s, 3);
            uint64_t ts = NOW - 60000 + (uint64_t)test_rand_int(&s, 120000);
            cr_assert_eq(nawal_envelope_seal_msg(&id, type, seq, ts, m, &env, &elen, err, sizeof err), 0, "%s", err);
            nawal_envelope_view v;
            int rc = nawal_envelope_open(env, elen, &pol, &peer, &v, err, sizeof err);
            cr_assert_eq(rc, 0, "%s #%d refused: %s", d->name, trial, err);
            cr_assert_eq(v.version, 1);
            cr_assert_eq(v.type, type);
            cr_assert_eq(v.sequence, seq);
            cr_assert_eq(v.timestamp_ms, ts);
            cr_assert_eq(memcmp(v.sender, id.pk, NAWAL_PUBKEY_BYTES), 0);
            cr_assert_eq(v.payload_len, plen);
            cr_assert(plen == 0 || memcmp(v.payload, payload, plen) == 0);
            cr_assert_eq(peer.last_sequence, seq);
            ProtobufCMessage *m2;
            cr_assert_eq(nawal_msg_unpack(v.type, v.payload, v.payload_len, &m2, err, sizeof err), 0, "%s", err);
            cr_assert(msg_equal(m, m2), "%s differs after the round trip", d->name);
            nawal_msg_free(m2);
            nawal_envelope_view_free(&v);
            cr_assert_eq(v.payload, NULL);
            free(payload);
            free(env);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
}

Test(envelope, signed_encoding_is_the_documented_one) {
    uint64_t s = test_seed("envelope.encoding");
    nawal_identity id = identity(&s);
    uint8_t payload[300];
    size_t n = (size_t)test_rand_int(&s, (int)sizeof payload);
    for (size_t i = 0; i < n; i++) payload[i] = (uint8_t)test_rand_u64(&s);
    uint64_t seq = test_rand_u64(&s) | 1, ts = test_rand_u64(&s);
    uint8_t *env;
    size_t elen;
    seal(&id, T(BLOB_CHUNK), seq, ts, payload, n, &env, &elen);
    Nawal__Envelope *e = nawal__envelope__unpack(NULL, elen, env);
    cr_assert(e);
    cr_assert_eq(e->signature.len, 64);
    uint8_t m[18 + 4 + 32 + 4 + 8 + 8 + 8 + sizeof payload], *p = m;
    memcpy(p, "nawal-envelope-v1", 18); /* with its NUL */
    p += 18;
    uint64_t fields[] = { 1, 0, T(BLOB_CHUNK), seq, ts, n };
    int widths[] = { 4, 0, 4, 8, 8, 8 };
    for (int k = 0; k < 6; k++) {
        if (k == 1) {
            memcpy(p, id.pk, 32);
            p += 32;
            continue;
        }
        for (int b = 0; b < widths[k]; b++) *p++ = (uint8_t)(fields[k] >> (8 * b));
    }
    memcpy(p, payload, n);
    p += n;
    cr_assert_eq(crypto_sign_verify_detached(e->signature.data, m, (size_t)(p - m), id.pk), 0,
                 "signature is not over the documented encoding");
    nawal__envelope__free_unpacked(e, NULL);
    free(env);
}

/* tampering: each edit of a validly sealed envelope and the code it earns */
static void edit_signature(Nawal__Envelope *e, void *a) { e->signature.data[*(int *)a % 64] ^= 0x01; }
static void edit_payload(Nawal__Envelope *e, void *a) { e->payload.data[*(int *)a % e->payload.len] ^= 0x80; }
static void edit_sender(Nawal__Envelope *e, void *a) { memcpy(e->sender.data, a, 32); }
static void edit_sequence(Nawal__Envelope *e, void *a) { e->sequence += *(int *)a % 5 + 1; }
static void edit_timestamp(Nawal__Envelope *e, void *a) { e->timestamp_ms -= *(int *)a % 1000 + 1; }
static void edit_type_known(Nawal__Envelope *e, void *a) {
    (void)a;
    e->type = e->type == T(ACK) ? T(HEARTBEAT) : T(ACK);
}
static void edit_type_unknown(Nawal__Envelope *e, void *a) { e->type = *(int *)a % 2 ? 15 + *(int *)a % 1000 : 0; }
static void edit_version(Nawal__Envelope *e, void *a) { e->version = *(int *)a % 2 ? 2 : 0; }
static void edit_short_sig(Nawal__Envelope *e, void *a) { e->signature.len = (size_t)(*(int *)a % 64); }
static void edit_no_sig(Nawal__Envelope *e, void *a) {
    (void)a;
    e->signature.len = 0;
}
static void edit_short_sender(Nawal__Envelope *e, void *a) { e->sender.len = (size_t)(*(int *)a % 32); }
static void edit_unknown_field(Nawal__Envelope *e, void *a) {
    (void)a;
    (void)e;
}

Test(envelope, tampering_is_refused_with_the_right_code) {
    uint64_t s = test_seed("envelope.tamper");
    nawal_identity id = identity(&s), other = identity(&s);
    nawal_envelope_policy pol = policy();
    char err[512] = "";
    struct {
        const char *what;
        void (*edit)(Nawal__Envelope *, void *);
        int code;
    } cases[] = {
        { "signature", edit_signature, E(BAD_SIGNATURE) },
        { "payload", edit_payload, E(BAD_SIGNATURE) },
        { "sender", edit_sender, E(BAD_SIGNATURE) },
        { "sequence", edit_sequence, E(BAD_SIGNATURE) },
        { "timestamp", edit_timestamp, E(BAD_SIGNATURE) },
        { "type (known)", edit_type_known, E(BAD_SIGNATURE) },
        { "type (unknown)", edit_type_unknown, E(UNKNOWN_TYPE) },
        { "version", edit_version, E(VERSION) },
        { "signature length", edit_short_sig, E(BAD_SIGNATURE) },
        { "no signature", edit_no_sig, E(BAD_SIGNATURE) },
        { "sender length", edit_short_sender, E(BAD_MESSAGE) },
        { "nothing", edit_unknown_field, 0 },
    };
    for (int trial = 0; trial < 10; trial++) {
        uint8_t payload[64];
        for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)test_rand_u64(&s);
        uint8_t *env;
        size_t elen;
        seal(&id, T(ACK), 1 + (uint64_t)test_rand_int(&s, 1000), NOW, payload, sizeof payload, &env, &elen);
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            int r = (int)(test_rand_u64(&s) >> 33);
            void *arg = cases[c].edit == edit_sender ? (void *)other.pk : (void *)&r;
            uint8_t *bad;
            size_t blen;
            reencode(env, elen, cases[c].edit, arg, &bad, &blen);
            int rc = open_fresh(bad, blen, &pol, err, sizeof err);
            cr_assert_eq(rc, cases[c].code, "tampered %s: got %s (%s), want %s", cases[c].what,
                         nawal_error_code_name(rc), err, nawal_error_code_name(cases[c].code));
            if (rc) cr_assert(err[0]);
            free(bad);
        }
        /* a registered-senders policy refuses a stranger before checking anything else */
        nawal_envelope_policy strict = pol;
        strict.is_known = only_known;
        known_key = other.pk;
        cr_assert_eq(open_fresh(env, elen, &strict, err, sizeof err), E(UNKNOWN_SENDER));
        known_key = id.pk;
        cr_assert_eq(open_fresh(env, elen, &strict, err, sizeof err), 0, "%s", err);
        /* any single bit flip anywhere in the encoding is refused */
        for (int k = 0; k < 200; k++) {
            size_t at = (size_t)test_rand_int(&s, (int)elen);
            int bit = test_rand_int(&s, 8);
            env[at] ^= (uint8_t)(1 << bit);
            int rc = open_fresh(env, elen, &pol, err, sizeof err);
            cr_assert_neq(rc, 0, "flip of bit %d of byte %zu accepted", bit, at);
            env[at] ^= (uint8_t)(1 << bit);
        }
        free(env);
    }
}

Test(envelope, replay_and_clock_window) {
    uint64_t s = test_seed("envelope.replay");
    nawal_identity id = identity(&s), other = identity(&s);
    nawal_envelope_policy pol = policy();
    nawal_peer_state peer = { 0 };
    nawal_envelope_view v;
    char err[512] = "";
    uint8_t *e5, *e4, *e6, *e0;
    size_t l5, l4, l6, l0;
    uint8_t hb[] = { 0x08, 0x01 };
    seal(&id, T(HEARTBEAT), 5, NOW, hb, sizeof hb, &e5, &l5);
    seal(&id, T(HEARTBEAT), 4, NOW, hb, sizeof hb, &e4, &l4);
    seal(&id, T(HEARTBEAT), 6, NOW, hb, sizeof hb, &e6, &l6);
    cr_assert_eq(nawal_envelope_open(e5, l5, &pol, &peer, &v, err, sizeof err), 0, "%s", err);
    nawal_envelope_view_free(&v);
    cr_assert_eq(peer.last_sequence, 5);
    cr_assert(peer.has_sender);
    /* the same bytes again, and an older sequence */
    cr_assert_eq(nawal_envelope_open(e5, l5, &pol, &peer, &v, err, sizeof err), E(REPLAY));
    cr_assert(strstr(err, "sequence"), "%s", err);
    cr_assert_eq(nawal_envelope_open(e4, l4, &pol, &peer, &v, err, sizeof err), E(REPLAY));
    cr_assert_eq(peer.last_sequence, 5);
    cr_assert_eq(nawal_envelope_open(e6, l6, &pol, &peer, &v, err, sizeof err), 0, "%s", err);
    nawal_envelope_view_free(&v);
    cr_assert_eq(nawal_envelope_open(e6, l6, &pol, &peer, &v, err, sizeof err), E(REPLAY));
    /* the peer is pinned to the first sender */
    uint8_t *eo;
    size_t lo;
    seal(&other, T(HEARTBEAT), 100, NOW, hb, sizeof hb, &eo, &lo);
    cr_assert_eq(nawal_envelope_open(eo, lo, &pol, &peer, &v, err, sizeof err), E(UNKNOWN_SENDER));
    cr_assert_eq(peer.last_sequence, 6);
    /* sequence 0 is never valid, and cannot be sealed */
    cr_assert_eq(nawal_envelope_seal(&id, T(HEARTBEAT), 0, NOW, hb, sizeof hb, &e0, &l0, err, sizeof err), -1);
    free(e4);
    free(e5);
    free(e6);
    free(eo);

    /* timestamps: exactly at the window edge accepted, one ms beyond refused */
    uint64_t w = pol.max_clock_skew_ms;
    struct {
        uint64_t ts;
        int code;
    } cases[] = { { NOW - w, 0 }, { NOW + w, 0 }, { NOW - w - 1, E(REPLAY) }, { NOW + w + 1, E(REPLAY) },
                  { 0, E(REPLAY) }, { UINT64_MAX, E(REPLAY) } };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint8_t *e;
        size_t l;
        seal(&id, T(HEARTBEAT), 1, cases[c].ts, hb, sizeof hb, &e, &l);
        int rc = open_fresh(e, l, &pol, err, sizeof err);
        cr_assert_eq(rc, cases[c].code, "timestamp %llu: got %s (%s)", (unsigned long long)cases[c].ts,
                     nawal_error_code_name(rc), err);
        if (rc) cr_assert(strstr(err, "timestamp"), "%s", err);
        free(e);
    }
    /* the real clock by default */
    nawal_envelope_policy real;
    nawal_envelope_policy_default(&real);
    uint8_t *e;
    size_t l;
    seal(&id, T(HEARTBEAT), 1, nawal_now_ms(), hb, sizeof hb, &e, &l);
    cr_assert_eq(open_fresh(e, l, &real, err, sizeof err), 0, "%s", err);
    free(e);
    seal(&id, T(HEARTBEAT), 1, NOW - 86400000ull * 365, hb, sizeof hb, &e, &l);
    cr_assert_eq(open_fresh(e, l, &real, err, sizeof err), E(REPLAY));
    free(e);
}

Test(envelope, oversize_refused_before_reading) {
    uint64_t s = test_seed("envelope.oversize");
    nawal_identity id = identity(&s);
    nawal_envelope_policy pol = policy();
    char err[512] = "";
    uint8_t *payload = calloc(1, 5000), *env;
    size_t elen;
    seal(&id, T(BLOB_CHUNK), 1, NOW, payload, 5000, &env, &elen);
    pol.max_message_bytes = elen;
    cr_assert_eq(open_fresh(env, elen, &pol, err, sizeof err), 0, "%s", err);
    pol.max_message_bytes = elen - 1;
    cr_assert_eq(open_fresh(env, elen, &pol, err, sizeof err), E(TOO_LARGE));
    cr_assert(strstr(err, "exceeds"), "%s", err);
    /* a claimed length far beyond a 16-byte heap buffer: refused without
     * reading past it (ASan builds would report the read) */
    uint8_t *tiny = malloc(16);
    memset(tiny, 0x0a, 16);
    pol = policy();
    cr_assert_eq(open_fresh(tiny, (size_t)1 << 40, &pol, err, sizeof err), E(TOO_LARGE));
    cr_assert_eq(open_fresh(tiny, pol.max_message_bytes + 1, &pol, err, sizeof err), E(TOO_LARGE));
    free(tiny);
    free(payload);
    free(env);
}

Test(envelope, unknown_types) {
    char err[512] = "";
    ProtobufCMessage *m;
    uint8_t buf[2] = { 0x08, 0x01 }, *out;
    size_t n;
    uint32_t bad[] = { 0, LAST_TYPE + 1, 99, 0x80000000u, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_null(nawal_msg_descriptor(bad[i]));
        cr_assert_eq(nawal_msg_unpack(bad[i], buf, sizeof buf, &m, err, sizeof err), E(UNKNOWN_TYPE));
        cr_assert_null(m);
        Nawal__Heartbeat hb = NAWAL__HEARTBEAT__INIT;
        cr_assert_eq(nawal_msg_pack(bad[i], &hb.base, &out, &n, err, sizeof err), E(UNKNOWN_TYPE));
        nawal_identity id;
        uint8_t seed[32] = { 0 };
        nawal_identity_from_seed(&id, seed, NULL, 0);
        cr_assert_eq(nawal_envelope_seal(&id, bad[i], 1, NOW, buf, 2, &out, &n, err, sizeof err), -1);
    }
    /* a message of the wrong type for the MsgType, and an unencodable one */
    Nawal__Ack ack = NAWAL__ACK__INIT;
    cr_assert_eq(nawal_msg_pack(T(HELLO), &ack.base, &out, &n, err, sizeof err), E(BAD_MESSAGE));
    cr_assert(strstr(err, "nawal.Hello"), "%s", err);
    Nawal__RoundResult rr = NAWAL__ROUND_RESULT__INIT;
    Nawal__Payout *none[1] = { NULL };
    rr.n_rewards = 1;
    rr.rewards = none;
    cr_assert_eq(nawal_msg_pack(T(ROUND_RESULT), &rr.base, &out, &n, err, sizeof err), E(BAD_MESSAGE));
    cr_assert(strstr(err, "not encodable"), "%s", err);
    cr_assert_str_eq(nawal_error_code_name(E(REPLAY)), "ERR_REPLAY");
    cr_assert_str_eq(nawal_msg_type_name(T(UPDATE_SUBMIT)), "MSG_UPDATE_SUBMIT");
    cr_assert_null(nawal_error_code_name(1000));
}

/* appends field `num` of wire type `wt` with value / bytes */
static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    do {
        p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

Test(envelope, unknown_fields_are_ignored) {
    uint64_t s = test_seed("envelope.unknown_fields");
    nawal_identity id = identity(&s);
    nawal_envelope_policy pol = policy();
    char err[512] = "";
    Nawal__Hello h = NAWAL__HELLO__INIT;
    h.version = 1;
    h.software = "nawal-agent test";
    h.pubkey.data = id.pk;
    h.pubkey.len = 32;
    uint8_t *p;
    size_t n;
    cr_assert_eq(nawal_msg_pack(T(HELLO), &h.base, &p, &n, err, sizeof err), 0, "%s", err);
    /* a future version adds field 100 (varint), 101 (bytes), 102 (fixed64), 103 (fixed32) */
    uint8_t *q = malloc(n + 64), *w = q + n;
    memcpy(q, p, n);
    w += put_varint(w, (100 << 3) | 0);
    w += put_varint(w, test_rand_u64(&s));
    w += put_varint(w, (101 << 3) | 2);
    w += put_varint(w, 5);
    memcpy(w, "extra", 5);
    w += 5;
    w += put_varint(w, (102 << 3) | 1);
    memset(w, 0x42, 8);
    w += 8;
    w += put_varint(w, (103 << 3) | 5);
    memset(w, 0x43, 4);
    w += 4;
    size_t qn = (size_t)(w - q);
    ProtobufCMessage *m;
    cr_assert_eq(nawal_msg_unpack(T(HELLO), q, qn, &m, err, sizeof err), 0, "%s", err);
    Nawal__Hello *h2 = (Nawal__Hello *)m;
    cr_assert_eq(h2->version, 1);
    cr_assert_str_eq(h2->software, "nawal-agent test");
    cr_assert_eq(h2->pubkey.len, 32);
    cr_assert_eq(memcmp(h2->pubkey.data, id.pk, 32), 0);
    nawal_msg_free(m);

    /* the same inside a sealed envelope, and fields appended to the envelope itself */
    uint8_t *env;
    size_t elen;
    seal(&id, T(HELLO), 1, NOW, q, qn, &env, &elen);
    uint8_t *env2 = malloc(elen + 32);
    memcpy(env2, env, elen);
    size_t l2 = elen;
    l2 += put_varint(env2 + l2, (50 << 3) | 0);
    l2 += put_varint(env2 + l2, 12345);
    l2 += put_varint(env2 + l2, (51 << 3) | 2);
    l2 += put_varint(env2 + l2, 3);
    memcpy(env2 + l2, "new", 3);
    l2 += 3;
    nawal_peer_state peer = { 0 };
    nawal_envelope_view v;
    cr_assert_eq(nawal_envelope_open(env2, l2, &pol, &peer, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_msg_unpack(v.type, v.payload, v.payload_len, &m, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(((Nawal__Hello *)m)->software, "nawal-agent test");
    nawal_msg_free(m);
    nawal_envelope_view_free(&v);
    free(env);
    free(env2);
    free(q);
    free(p);
}

Test(envelope, garbage_is_a_bad_message) {
    uint64_t s = test_seed("envelope.garbage");
    nawal_identity id = identity(&s);
    nawal_envelope_policy pol = policy();
    char err[512] = "";
    uint8_t ff[40];
    memset(ff, 0xff, sizeof ff); /* a varint tag that never ends */
    cr_assert_eq(open_fresh(ff, sizeof ff, &pol, err, sizeof err), E(BAD_MESSAGE));
    cr_assert(err[0]);
    uint8_t wt[] = { 0x0f, 0x01 }; /* field 1, wire type 7 */
    cr_assert_eq(open_fresh(wt, sizeof wt, &pol, err, sizeof err), E(BAD_MESSAGE));
    uint8_t longlen[] = { 0x32, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00 }; /* payload claims 4 GiB */
    cr_assert_eq(open_fresh(longlen, sizeof longlen, &pol, err, sizeof err), E(BAD_MESSAGE));
    /* empty input decodes to an all-default envelope: version 0 */
    cr_assert_eq(open_fresh(NULL, 0, &pol, err, sizeof err), E(VERSION));

    /* every truncation of a valid envelope is refused; those cutting the
     * payload or signature short do not even decode */
    uint8_t payload[100], *env;
    size_t elen;
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)test_rand_u64(&s);
    seal(&id, T(BLOB_CHUNK), 3, NOW, payload, sizeof payload, &env, &elen);
    for (size_t cut = 0; cut < elen; cut++) {
        uint8_t *c = malloc(cut ? cut : 1);
        memcpy(c, env, cut);
        int rc = open_fresh(c, cut, &pol, err, sizeof err);
        cr_assert_neq(rc, 0, "truncation to %zu accepted", cut);
        if (cut > elen - 60) cr_assert_eq(rc, E(BAD_MESSAGE), "cut %zu: %s", cut, nawal_error_code_name(rc));
        free(c);
    }
    free(env);
    /* random bytes never crash, never pass, never advance the peer */
    for (int trial = 0; trial < 2000; trial++) {
        size_t n = (size_t)test_rand_int(&s, 300);
        uint8_t *g = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++) g[i] = (uint8_t)test_rand_u64(&s);
        cr_assert_neq(open_fresh(g, n, &pol, err, sizeof err), 0);
        for (uint32_t t = FIRST_TYPE; t <= LAST_TYPE; t++) {
            ProtobufCMessage *m;
            int rc = nawal_msg_unpack(t, g, n, &m, err, sizeof err);
            cr_assert(rc == 0 || rc == E(BAD_MESSAGE));
            nawal_msg_free(m);
        }
        free(g);
    }
    ProtobufCMessage *m;
    cr_assert_eq(nawal_msg_unpack(T(HELLO), ff, sizeof ff, &m, err, sizeof err), E(BAD_MESSAGE));
    cr_assert(strstr(err, "MSG_HELLO"), "%s", err);
    /* field number 0 (spelled as a non-minimal varint, which protobuf-c
     * would otherwise keep and then write back as an invalid tag) */
    uint8_t zero_tag[] = { 0x80, 0x00, 0x06 };
    cr_assert_eq(nawal_msg_unpack(T(HELLO), zero_tag, sizeof zero_tag, &m, err, sizeof err), E(BAD_MESSAGE));
    uint8_t nested_zero[] = { 0x22, 0x05, 0x22, 0x03, 0x80, 0x00, 0x06 }; /* RoundAnnounce.config.dp */
    cr_assert_eq(nawal_msg_unpack(T(ROUND_ANNOUNCE), nested_zero, sizeof nested_zero, &m, err, sizeof err),
                 E(BAD_MESSAGE));
    /* the largest field number is fine, one more is not */
    uint8_t big[8];
    size_t nb = put_varint(big, (uint64_t)((1u << 29) - 1) << 3);
    big[nb++] = 0x01;
    cr_assert_eq(nawal_msg_unpack(T(HELLO), big, nb, &m, err, sizeof err), 0, "%s", err);
    uint8_t *p;
    size_t pn;
    cr_assert_eq(nawal_msg_pack(T(HELLO), m, &p, &pn, err, sizeof err), 0, "%s", err);
    cr_assert(pn == nb && memcmp(p, big, nb) == 0, "unknown field not written back as read");
    free(p);
    nawal_msg_free(m);
    nb = put_varint(big, (uint64_t)(1u << 29) << 3);
    big[nb++] = 0x01;
    cr_assert_neq(nawal_msg_unpack(T(HELLO), big, nb, &m, err, sizeof err), 0);
}

/* The allocation cap is a multiple of the input size: the costliest inputs
 * per byte (2-byte empty repeated sub-messages, empty unknown fields) must
 * still decode at the default envelope limit. */
Test(envelope, allocation_bound_admits_worst_legal_inputs) {
    size_t n = NAWAL_ENVELOPE_DEFAULT_MAX_BYTES;
    uint8_t *buf = malloc(n);
    char err[512] = "";
    ProtobufCMessage *m;
    for (size_t i = 0; i < n; i += 2) buf[i] = 0x22, buf[i + 1] = 0x00; /* RoundResult.rewards = {} */
    cr_assert_eq(nawal_msg_unpack(T(ROUND_RESULT), buf, n, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(((Nawal__RoundResult *)m)->n_rewards, n / 2);
    nawal_msg_free(m);
    for (size_t i = 0; i < n; i += 2) buf[i] = 0x1a, buf[i + 1] = 0x00; /* RoundResult.accepted = "" */
    cr_assert_eq(nawal_msg_unpack(T(ROUND_RESULT), buf, n, &m, err, sizeof err), 0, "%s", err);
    nawal_msg_free(m);
    for (size_t i = 0; i < n; i += 2) buf[i] = 0x78, buf[i + 1] = 0x00; /* unknown field 15 */
    cr_assert_eq(nawal_msg_unpack(T(HEARTBEAT), buf, n, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(m->n_unknown_fields, n / 2);
    nawal_msg_free(m);
    nawal_envelope_policy pol = policy();
    cr_assert_eq(open_fresh(buf, n, &pol, err, sizeof err), E(VERSION), "%s", err);
    free(buf);
}
