/* envelope.c - sealing and opening signed envelopes, and the MsgType <->
 * message table (see envelope.h for the signed encoding and the order of
 * checks).
 *
 * Decoding untrusted bytes goes through protobuf-c with a counting
 * allocator: protobuf-c itself never trusts a length prefix beyond the
 * input, and the allocator caps the total it may allocate for one decode at
 * UNPACK_FACTOR * len + UNPACK_SLACK (len already bounded by the caller's
 * policy), so no input can make a decode allocate more than a fixed
 * multiple of its own size. Messages decoded that way are freed with the
 * system allocator, which the counting allocator wraps. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "envelope.h"
#include "cid.h"
#include "error.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The costliest inputs per byte measured with protobuf-c 1.4.1: 60 bytes
 * allocated per input byte for 2-byte empty repeated sub-messages
 * (RoundResult.rewards), ~45 for empty unknown fields; the cap leaves room
 * above that (test_envelope.c checks these decode at the default limit),
 * and also stops growth from repeatedly merged duplicate sub-messages. */
#define UNPACK_FACTOR ((size_t)96)
#define UNPACK_SLACK ((size_t)64 << 10)
#define SIGNED_HEADER_BYTES (NAWAL_ENVELOPE_TAG_BYTES + 4 + NAWAL_PUBKEY_BYTES + 4 + 8 + 8 + 8)

_Static_assert(sizeof NAWAL_ENVELOPE_TAG == NAWAL_ENVELOPE_TAG_BYTES, "tag is 17 characters and a NUL");

/* --- counting allocator ------------------------------------------------- */

typedef struct {
    size_t used, cap;
} budget;

static void *budget_alloc(void *data, size_t size) {
    budget *b = data;
    if (size > b->cap - b->used) return NULL;
    b->used += size;
    return malloc(size ? size : 1);
}

static void budget_free(void *data, void *p) {
    (void)data;
    free(p);
}

/* Field numbers run from 1 to 2^29 - 1. protobuf-c 1.4 keeps an unknown
 * field numbered 0 when its tag is a non-minimal varint (80 00 ...) and
 * numbers above the range, then cannot write either back faithfully: such
 * input is refused so that everything accepted re-encodes stably. */
static int unknown_fields_valid(const ProtobufCMessage *m) {
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0 || m->unknown_fields[i].tag > ((1u << 29) - 1)) return 0;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        const char *p = (const char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)p;
            for (size_t k = 0; k < n; k++)
                if (arr[k] && !unknown_fields_valid(arr[k])) return 0;
        } else {
            const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
            if (sub && !unknown_fields_valid(sub)) return 0;
        }
    }
    return 1;
}

static ProtobufCMessage *unpack_bounded(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len) {
    static const uint8_t empty[1];
    budget b = { 0, len > (SIZE_MAX - UNPACK_SLACK) / UNPACK_FACTOR ? SIZE_MAX : UNPACK_FACTOR * len + UNPACK_SLACK };
    ProtobufCAllocator a = { budget_alloc, budget_free, &b };
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &a, len, len ? buf : empty);
    if (m && !unknown_fields_valid(m)) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    return m;
}

/* --- names and the type table ------------------------------------------- */

const ProtobufCMessageDescriptor *nawal_msg_descriptor(uint32_t type) {
    switch (type) {
    case NAWAL__MSG_TYPE__MSG_HELLO: return &nawal__hello__descriptor;
    case NAWAL__MSG_TYPE__MSG_CHALLENGE: return &nawal__challenge__descriptor;
    case NAWAL__MSG_TYPE__MSG_AUTH: return &nawal__auth__descriptor;
    case NAWAL__MSG_TYPE__MSG_ROUND_ANNOUNCE: return &nawal__round_announce__descriptor;
    case NAWAL__MSG_TYPE__MSG_JOIN: return &nawal__join__descriptor;
    case NAWAL__MSG_TYPE__MSG_BLOB_REQUEST: return &nawal__blob_request__descriptor;
    case NAWAL__MSG_TYPE__MSG_BLOB_CHUNK: return &nawal__blob_chunk__descriptor;
    case NAWAL__MSG_TYPE__MSG_UPDATE_SUBMIT: return &nawal__update_submit__descriptor;
    case NAWAL__MSG_TYPE__MSG_ACK: return &nawal__ack__descriptor;
    case NAWAL__MSG_TYPE__MSG_ERROR: return &nawal__error__descriptor;
    case NAWAL__MSG_TYPE__MSG_ROUND_RESULT: return &nawal__round_result__descriptor;
    case NAWAL__MSG_TYPE__MSG_EVALUATE_REQUEST: return &nawal__evaluate_request__descriptor;
    case NAWAL__MSG_TYPE__MSG_EVALUATE_RESULT: return &nawal__evaluate_result__descriptor;
    case NAWAL__MSG_TYPE__MSG_HEARTBEAT: return &nawal__heartbeat__descriptor;
    default: return NULL;
    }
}

const char *nawal_msg_type_name(uint32_t type) {
    if (type > INT32_MAX) return NULL;
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&nawal__msg_type__descriptor, (int)type);
    return v ? v->name : NULL;
}

const char *nawal_error_code_name(int code) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&nawal__error_code__descriptor, code);
    return v ? v->name : NULL;
}

/* Formats err and returns `code` (a Nawal__ErrorCode). */
static int refuse(int code, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int refuse(int code, char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* --- per-message pack / unpack ------------------------------------------ */

int nawal_msg_pack(uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *out_len,
                   char *err, size_t errlen) {
    *out = NULL;
    *out_len = 0;
    const ProtobufCMessageDescriptor *d = nawal_msg_descriptor(type);
    if (!d) return refuse(NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE, err, errlen, "unknown message type %" PRIu32, type);
    if (!msg || msg->descriptor != d)
        return refuse(NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, errlen, "%s carries %s, not %s", nawal_msg_type_name(type),
                      d->name, msg ? msg->descriptor->name : "nothing");
    if (!protobuf_c_message_check(msg))
        return refuse(NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, errlen, "%s is not encodable (a NULL string or array?)",
                      d->name);
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return refuse(NAWAL__ERROR_CODE__ERR_INTERNAL, err, errlen, "out of memory packing %zu bytes", n);
    if (protobuf_c_message_pack(msg, buf) != n) {
        free(buf);
        return refuse(NAWAL__ERROR_CODE__ERR_INTERNAL, err, errlen, "protobuf-c packed an unexpected size");
    }
    *out = buf;
    *out_len = n;
    return 0;
}

int nawal_msg_unpack(uint32_t type, const uint8_t *payload, size_t len, ProtobufCMessage **out,
                     char *err, size_t errlen) {
    *out = NULL;
    const ProtobufCMessageDescriptor *d = nawal_msg_descriptor(type);
    if (!d) return refuse(NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE, err, errlen, "unknown message type %" PRIu32, type);
    if (!payload && len) return refuse(NAWAL__ERROR_CODE__ERR_INTERNAL, err, errlen, "NULL payload");
    ProtobufCMessage *m = unpack_bounded(d, payload, len);
    if (!m)
        return refuse(NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, errlen, "%s payload of %zu bytes does not decode as %s",
                      nawal_msg_type_name(type), len, d->name);
    *out = m;
    return 0;
}

void nawal_msg_free(ProtobufCMessage *msg) {
    if (msg) protobuf_c_message_free_unpacked(msg, NULL);
}

/* --- envelopes ---------------------------------------------------------- */

uint64_t nawal_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void nawal_envelope_policy_default(nawal_envelope_policy *pol) {
    memset(pol, 0, sizeof *pol);
    pol->max_message_bytes = NAWAL_ENVELOPE_DEFAULT_MAX_BYTES;
    pol->max_clock_skew_ms = NAWAL_ENVELOPE_DEFAULT_SKEW_MS;
}

static uint8_t *put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + n;
}

/* The signed byte string (envelope.h); malloc'ed, NULL when out of memory
 * or too large to address. */
static uint8_t *signed_bytes(uint32_t version, const uint8_t sender[NAWAL_PUBKEY_BYTES], uint32_t type, uint64_t seq,
                             uint64_t ts, const uint8_t *payload, size_t len, size_t *n) {
    if (len > SIZE_MAX - SIGNED_HEADER_BYTES) return NULL;
    *n = SIGNED_HEADER_BYTES + len;
    uint8_t *m = malloc(*n), *p = m;
    if (!m) return NULL;
    memcpy(p, NAWAL_ENVELOPE_TAG, NAWAL_ENVELOPE_TAG_BYTES);
    p += NAWAL_ENVELOPE_TAG_BYTES;
    p = put_le(p, version, 4);
    memcpy(p, sender, NAWAL_PUBKEY_BYTES);
    p += NAWAL_PUBKEY_BYTES;
    p = put_le(p, type, 4);
    p = put_le(p, seq, 8);
    p = put_le(p, ts, 8);
    p = put_le(p, (uint64_t)len, 8);
    if (len) memcpy(p, payload, len);
    return m;
}

int nawal_envelope_seal(const nawal_identity *id, uint32_t type, uint64_t seq, uint64_t ts_ms,
                        const uint8_t *payload, size_t len, uint8_t **out, size_t *out_len,
                        char *err, size_t errlen) {
    *out = NULL;
    *out_len = 0;
    if (!nawal_msg_descriptor(type)) return nawal_fail(err, errlen, "cannot seal unknown message type %" PRIu32, type);
    if (seq == 0) return nawal_fail(err, errlen, "envelope sequence numbers start at 1");
    if (!payload && len) return nawal_fail(err, errlen, "NULL payload of %zu bytes", len);
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    size_t mlen;
    uint8_t *m = signed_bytes(NAWAL__VERSION__PROTOCOL_VERSION, id->pk, type, seq, ts_ms, payload, len, &mlen);
    if (!m) return nawal_fail(err, errlen, "out of memory sealing a %zu-byte payload", len);
    uint8_t sig[NAWAL_SIGNATURE_BYTES];
    int rc = crypto_sign_detached(sig, NULL, m, mlen, id->sk);
    free(m);
    if (rc) return nawal_fail(err, errlen, "Ed25519 signing failed");

    Nawal__Envelope env = NAWAL__ENVELOPE__INIT;
    env.version = NAWAL__VERSION__PROTOCOL_VERSION;
    env.sender.data = (uint8_t *)id->pk;
    env.sender.len = NAWAL_PUBKEY_BYTES;
    env.type = (Nawal__MsgType)type;
    env.sequence = seq;
    env.timestamp_ms = ts_ms;
    env.payload.data = (uint8_t *)payload;
    env.payload.len = len;
    env.signature.data = sig;
    env.signature.len = sizeof sig;
    size_t n = nawal__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(n);
    if (!buf) return nawal_fail(err, errlen, "out of memory sealing a %zu-byte envelope", n);
    if (nawal__envelope__pack(&env, buf) != n) {
        free(buf);
        return nawal_fail(err, errlen, "protobuf-c packed an unexpected size");
    }
    *out = buf;
    *out_len = n;
    return 0;
}

int nawal_envelope_seal_msg(const nawal_identity *id, uint32_t type, uint64_t seq, uint64_t ts_ms,
                            const ProtobufCMessage *msg, uint8_t **out, size_t *out_len,
                            char *err, size_t errlen) {
    uint8_t *payload;
    size_t len;
    *out = NULL;
    *out_len = 0;
    if (nawal_msg_pack(type, msg, &payload, &len, err, errlen)) return -1;
    int rc = nawal_envelope_seal(id, type, seq, ts_ms, payload, len, out, out_len, err, errlen);
    free(payload);
    return rc;
}

void nawal_envelope_view_free(nawal_envelope_view *v) {
    if (!v) return;
    if (v->decoded_) protobuf_c_message_free_unpacked(&v->decoded_->base, NULL);
    memset(v, 0, sizeof *v);
}

int nawal_envelope_open(const uint8_t *buf, size_t len, const nawal_envelope_policy *pol,
                        nawal_peer_state *peer, nawal_envelope_view *out, char *err, size_t errlen) {
    enum {
        BAD_MESSAGE = NAWAL__ERROR_CODE__ERR_BAD_MESSAGE,
        BAD_SIGNATURE = NAWAL__ERROR_CODE__ERR_BAD_SIGNATURE,
        UNKNOWN_SENDER = NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER,
        REPLAY = NAWAL__ERROR_CODE__ERR_REPLAY,
        TOO_LARGE = NAWAL__ERROR_CODE__ERR_TOO_LARGE,
        UNKNOWN_TYPE = NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE,
        VERSION = NAWAL__ERROR_CODE__ERR_VERSION,
        INTERNAL = NAWAL__ERROR_CODE__ERR_INTERNAL,
    };
    if (out) memset(out, 0, sizeof *out);
    if (!pol || !peer || !out || (!buf && len))
        return refuse(INTERNAL, err, errlen, "nawal_envelope_open: missing argument");
    /* 1. size, before touching the bytes */
    if (len > pol->max_message_bytes)
        return refuse(TOO_LARGE, err, errlen, "envelope of %zu bytes exceeds the limit of %zu", len,
                      pol->max_message_bytes);
    /* 2. decode, with allocation bounded by a multiple of len */
    ProtobufCMessage *m = unpack_bounded(&nawal__envelope__descriptor, buf, len);
    if (!m) return refuse(BAD_MESSAGE, err, errlen, "%zu bytes do not decode as an Envelope", len);
    Nawal__Envelope *env = (Nawal__Envelope *)m;
    int rc;
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES], fp2[NAWAL_FINGERPRINT_SHORT_BYTES];
    /* 3. structure */
    if (env->version != NAWAL__VERSION__PROTOCOL_VERSION) {
        rc = refuse(VERSION, err, errlen, "protocol version %" PRIu32 ", this build speaks version %d", env->version,
                    NAWAL__VERSION__PROTOCOL_VERSION);
        goto fail;
    }
    if (env->sender.len != NAWAL_PUBKEY_BYTES) {
        rc = refuse(BAD_MESSAGE, err, errlen, "sender key is %zu bytes, want %d", env->sender.len, NAWAL_PUBKEY_BYTES);
        goto fail;
    }
    if (env->signature.len != NAWAL_SIGNATURE_BYTES) {
        rc = refuse(BAD_SIGNATURE, err, errlen, "signature is %zu bytes, want %d", env->signature.len,
                    NAWAL_SIGNATURE_BYTES);
        goto fail;
    }
    uint32_t type = (uint32_t)env->type;
    if (!nawal_msg_descriptor(type)) {
        rc = refuse(UNKNOWN_TYPE, err, errlen, "unknown message type %d", (int)env->type);
        goto fail;
    }
    /* 4. sender */
    nawal_fingerprint_short(fp, env->sender.data);
    if (pol->is_known && !pol->is_known(env->sender.data, pol->ctx)) {
        rc = refuse(UNKNOWN_SENDER, err, errlen, "sender %s is not known here", fp);
        goto fail;
    }
    if (peer->has_sender && sodium_memcmp(peer->sender, env->sender.data, NAWAL_PUBKEY_BYTES) != 0) {
        nawal_fingerprint_short(fp2, peer->sender);
        rc = refuse(UNKNOWN_SENDER, err, errlen, "sender %s is not this peer (%s)", fp, fp2);
        goto fail;
    }
    /* 5. signature */
    if (nawal_crypto_init()) {
        rc = refuse(INTERNAL, err, errlen, "libsodium failed to initialise");
        goto fail;
    }
    size_t mlen;
    uint8_t *sm = signed_bytes(env->version, env->sender.data, type, env->sequence, env->timestamp_ms,
                               env->payload.data, env->payload.len, &mlen);
    if (!sm) {
        rc = refuse(INTERNAL, err, errlen, "out of memory checking a %zu-byte envelope", len);
        goto fail;
    }
    int bad = crypto_sign_verify_detached(env->signature.data, sm, mlen, env->sender.data);
    free(sm);
    if (bad) {
        rc = refuse(BAD_SIGNATURE, err, errlen, "bad signature on %s #%" PRIu64 " from %s", nawal_msg_type_name(type),
                    env->sequence, fp);
        goto fail;
    }
    /* 6. freshness */
    if (env->sequence <= peer->last_sequence) {
        rc = refuse(REPLAY, err, errlen, "%s from %s: sequence %" PRIu64 " is not after %" PRIu64 " (replay?)",
                    nawal_msg_type_name(type), fp, env->sequence, peer->last_sequence);
        goto fail;
    }
    uint64_t now = pol->now_ms ? pol->now_ms(pol->ctx) : nawal_now_ms();
    uint64_t skew = env->timestamp_ms > now ? env->timestamp_ms - now : now - env->timestamp_ms;
    if (skew > pol->max_clock_skew_ms) {
        rc = refuse(REPLAY, err, errlen,
                    "%s from %s: timestamp %" PRIu64 " is %" PRIu64 " ms %s our clock (limit %" PRIu64 " ms)",
                    nawal_msg_type_name(type), fp, env->timestamp_ms, skew,
                    env->timestamp_ms > now ? "ahead of" : "behind", pol->max_clock_skew_ms);
        goto fail;
    }
    /* accepted */
    peer->last_sequence = env->sequence;
    if (!peer->has_sender) {
        memcpy(peer->sender, env->sender.data, NAWAL_PUBKEY_BYTES);
        peer->has_sender = 1;
    }
    out->version = env->version;
    memcpy(out->sender, env->sender.data, NAWAL_PUBKEY_BYTES);
    out->type = type;
    out->sequence = env->sequence;
    out->timestamp_ms = env->timestamp_ms;
    out->payload = env->payload.data;
    out->payload_len = env->payload.len;
    out->decoded_ = env;
    return 0;
fail:
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}
