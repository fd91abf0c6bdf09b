/* envelope.h - signed envelopes and per-message encoding: every message
 * between nawal-agent and nawal-coordinator is one protobuf message (from
 * nawal.proto) packed into the `payload` of an Envelope that names its type
 * and is signed by the sender's Ed25519 identity (identity.h). The
 * transport moves sealed envelopes as opaque byte strings; this file is
 * where they are made and where bytes from the network are judged.
 *
 * Signature: Ed25519 (libsodium, detached) over this byte string, which is
 * independent of the protobuf encoding so re-encoding cannot change what
 * was signed:
 *
 *   "nawal-envelope-v1\0"   18 bytes, ASCII tag and a NUL (domain separation)
 *   version                 u32 little-endian (PROTOCOL_VERSION = 1)
 *   sender                  32 bytes, the signer's public key
 *   type                    u32 LE, a MsgType value
 *   sequence                u64 LE
 *   timestamp_ms            u64 LE, Unix time in milliseconds
 *   payload length          u64 LE
 *   payload                 the bytes
 *
 * nawal_envelope_open() judges untrusted bytes in this order, and returns
 * at the first failure: the length against pol->max_message_bytes (before
 * reading a byte), protobuf decoding (through an allocator whose total is
 * bounded by a multiple of that already-bounded length), the version, the
 * sender and signature lengths, the type, the sender (pol->is_known and the
 * sender pinned in the peer state), the signature, the sequence (must be
 * strictly greater than the last accepted one from this peer) and the
 * timestamp (within pol->max_clock_skew_ms of now). Only then is the peer
 * state advanced. Unknown protobuf fields, in the envelope or in a message,
 * are ignored, so newer peers may add optional fields.
 *
 * Return convention: functions that judge bytes from a peer
 * (nawal_envelope_open, nawal_msg_unpack) and nawal_msg_pack return 0 on
 * success or a Nawal__ErrorCode value (> 0) saying why not, with human text
 * in `err`, so a receiver can answer with an Error message carrying both.
 * nawal_envelope_seal returns 0 / -1 like the rest of nawal. */
#ifndef NAWAL_ENVELOPE_H
#define NAWAL_ENVELOPE_H

#include "identity.h"
#include "nawal.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define NAWAL_ENVELOPE_TAG "nawal-envelope-v1" /* signed with its NUL */
#define NAWAL_ENVELOPE_TAG_BYTES 18
/* Defaults of nawal_envelope_policy_default(): room for one 1 MiB blob
 * chunk with its headers, and five minutes of clock disagreement. */
#define NAWAL_ENVELOPE_DEFAULT_MAX_BYTES ((size_t)4 << 20)
#define NAWAL_ENVELOPE_DEFAULT_SKEW_MS ((uint64_t)5 * 60 * 1000)

/* What a receiver accepts. */
typedef struct {
    size_t max_message_bytes;   /* whole encoded envelope; larger -> ERR_TOO_LARGE */
    uint64_t max_clock_skew_ms; /* |timestamp - now| allowed; larger -> ERR_REPLAY */
    /* Optional: return nonzero if `sender` may talk to us (e.g. registered
     * validators); NULL accepts any sender. Called before the signature is
     * checked, so it must not trust anything but the key itself. */
    int (*is_known)(const uint8_t sender[NAWAL_PUBKEY_BYTES], void *ctx);
    /* Optional clock (Unix ms); NULL uses the system's real-time clock. */
    uint64_t (*now_ms)(void *ctx);
    void *ctx; /* passed to both callbacks */
} nawal_envelope_policy;

/* Defaults above, no sender filter, the system clock. */
void nawal_envelope_policy_default(nawal_envelope_policy *pol);

/* What a receiver remembers about one peer (one connection, or one sender
 * across connections). Zero-initialise it: the first accepted envelope
 * must have sequence >= 1 and pins the sender; after that, envelopes from
 * another key are refused with ERR_UNKNOWN_SENDER. A receiver that already
 * knows the peer's key (e.g. after a handshake) may pre-set `sender` and
 * `has_sender`, and may restore `last_sequence` from storage. */
typedef struct {
    uint64_t last_sequence;
    int has_sender;
    uint8_t sender[NAWAL_PUBKEY_BYTES];
} nawal_peer_state;

/* An accepted envelope. `payload` points into memory owned by the view:
 * release it with nawal_envelope_view_free(). */
typedef struct {
    uint32_t version;
    uint8_t sender[NAWAL_PUBKEY_BYTES];
    uint32_t type; /* a known Nawal__MsgType */
    uint64_t sequence;
    uint64_t timestamp_ms;
    const uint8_t *payload;
    size_t payload_len;
    Nawal__Envelope *decoded_; /* internal: owns payload */
} nawal_envelope_view;

/* Encodes and signs an envelope holding `payload` (len bytes, may be NULL
 * when len is 0) of message type `type` (must be a known MsgType) with
 * sequence `seq` (>= 1) and timestamp `ts_ms`. On success *out is a
 * malloc'ed buffer of *out_len bytes (free() it). */
int nawal_envelope_seal(const nawal_identity *id, uint32_t type, uint64_t seq, uint64_t ts_ms,
                        const uint8_t *payload, size_t len, uint8_t **out, size_t *out_len,
                        char *err, size_t errlen);

/* nawal_msg_pack() then nawal_envelope_seal(); 0 / -1. */
int nawal_envelope_seal_msg(const nawal_identity *id, uint32_t type, uint64_t seq, uint64_t ts_ms,
                            const ProtobufCMessage *msg, uint8_t **out, size_t *out_len,
                            char *err, size_t errlen);

/* Judges buf[0..len) from the network (see the order above). Returns 0 and
 * fills *out (caller frees with nawal_envelope_view_free) when accepted;
 * otherwise a Nawal__ErrorCode with a message in err, *out zeroed and
 * *peer unchanged. */
int nawal_envelope_open(const uint8_t *buf, size_t len, const nawal_envelope_policy *pol,
                        nawal_peer_state *peer, nawal_envelope_view *out, char *err, size_t errlen);

/* Frees what an accepted view owns and zeroes it; safe on a zeroed view. */
void nawal_envelope_view_free(nawal_envelope_view *v);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
uint64_t nawal_now_ms(void);

/* --- per-message encoding: MsgType <-> message descriptor ---------------- */

/* Descriptor of the message a MsgType carries (MSG_HELLO -> Hello, ...),
 * NULL for MSG_UNSPECIFIED and values not in MsgType. */
const ProtobufCMessageDescriptor *nawal_msg_descriptor(uint32_t type);

/* "MSG_HELLO", ... or NULL for unknown values. */
const char *nawal_msg_type_name(uint32_t type);
/* "ERR_REPLAY", ... or NULL for unknown values. */
const char *nawal_error_code_name(int code);

/* Encodes `msg`, which must be the message `type` carries. Returns 0 with
 * a malloc'ed *out of *out_len bytes (free() it), ERR_UNKNOWN_TYPE for an
 * unknown type, ERR_BAD_MESSAGE when msg is not of that type or not
 * encodable (e.g. a NULL string), ERR_INTERNAL when out of memory. */
int nawal_msg_pack(uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *out_len,
                   char *err, size_t errlen);

/* Decodes payload[0..len) as the message `type` carries (unknown fields are
 * kept aside and ignored). Returns 0 with *out to release with
 * nawal_msg_free() (cast it to the type's struct, e.g. Nawal__Hello *),
 * ERR_UNKNOWN_TYPE for an unknown type, ERR_BAD_MESSAGE when the bytes do
 * not decode. Allocation is bounded by a multiple of len. */
int nawal_msg_unpack(uint32_t type, const uint8_t *payload, size_t len, ProtobufCMessage **out,
                     char *err, size_t errlen);

void nawal_msg_free(ProtobufCMessage *msg);

#endif
