/* blobstream.h - chunked, resumable streaming of content-addressed blobs
 * (base models, model deltas) of any size, with memory use independent of
 * the blob size.
 *
 * The receiver drives: it sends BlobRequest{cid, offset}, where offset is
 * how much of the blob it already holds in `<path>.part` (0 at first, the
 * .part file's size after a reconnect). The sender answers with BlobChunk
 * messages {cid, offset, data (at most 1 MiB), total_size} read from its file
 * at that offset, at least one chunk (an empty one when offset == size), and
 * keeps at most `window` chunk messages queued in the transport, continuing
 * when the queue drains (call nawal_blob_sender_pump() again from on_drain).
 *
 * The receiver checks each chunk (right CID, same total_size, offset equal to
 * the bytes it holds, at most 1 MiB, within total_size and max_size), appends
 * it to the .part file and, once total_size bytes are there, compares the
 * BLAKE2b-256 of the whole file with the CID: equal -> the .part file is
 * synced and renamed to `path`; different -> the .part file is removed and
 * the transfer fails. Hashing runs on a helper thread that reads the .part
 * file back (from the page cache) behind the writes, so the network loop does
 * not wait for it; on resume it hashes the existing prefix first. The writer
 * waits when hashing falls more than 64 MiB behind.
 *
 * These functions only encode and decode messages: the caller moves them
 * (nawal_blob_sink_ws() for a raw transport connection, or its own sink that
 * wraps them, e.g. in an envelope) and hands received ones in. A transport
 * carrying them needs max_message >= NAWAL_BLOB_CHUNK_MSG_MAX (the default
 * 4 MiB is). */
#ifndef NAWAL_BLOBSTREAM_H
#define NAWAL_BLOBSTREAM_H

#include "transport.h"

#include <stddef.h>
#include <stdint.h>

#define NAWAL_BLOB_CHUNK_BYTES ((size_t)1 << 20)          /* data per BlobChunk */
#define NAWAL_BLOB_WINDOW 8                               /* default chunks queued at once */
#define NAWAL_BLOB_CHUNK_MSG_MAX (NAWAL_BLOB_CHUNK_BYTES + 128) /* largest encoded BlobChunk */
#define NAWAL_BLOB_REQUEST_MAX 64                         /* largest encoded BlobRequest */

/* Where encoded messages go. send(): 0 = accepted (copied), -1 = refused
 * (errno EAGAIN: full, retried on the next pump; anything else: error).
 * pending(): messages accepted but not yet written out. */
typedef struct nawal_blob_sink {
    int (*send)(void *ctx, const uint8_t *msg, size_t len);
    size_t (*pending)(void *ctx);
    void *ctx;
} nawal_blob_sink;

/* A sink writing straight to a transport connection (nawal_ws_send / nawal_ws_queued). */
void nawal_blob_sink_ws(nawal_blob_sink *sink, nawal_ws_conn *c);

/* BlobRequest{cid, offset}: encode into buf (cap >= NAWAL_BLOB_REQUEST_MAX
 * is always enough), decode from a received message. */
int nawal_blob_request_encode(uint8_t *buf, size_t cap, size_t *len, const uint8_t cid[32], uint64_t offset);
int nawal_blob_request_decode(const uint8_t *msg, size_t len, uint8_t cid[32], uint64_t *offset,
                              char *err, size_t errlen);

/* ---- sender ---- */
typedef struct nawal_blob_sender nawal_blob_sender;

/* Serves the file at `path`, whose content ID is `cid` (the caller's store
 * vouches for it), from `offset` (the BlobRequest's; > size is an error).
 * window = chunk messages queued at most (0 = NAWAL_BLOB_WINDOW). */
int nawal_blob_sender_open(nawal_blob_sender **out, const char *path, const uint8_t cid[32], uint64_t offset,
                           size_t window, char *err, size_t errlen);
/* Queues chunks while sink->pending() < window. Returns 1 when the last
 * chunk has been queued, 0 when more remain (call again when the transport
 * drains), -1 on error (unreadable file, sink error). */
int nawal_blob_sender_pump(nawal_blob_sender *s, const nawal_blob_sink *sink, char *err, size_t errlen);
uint64_t nawal_blob_sender_offset(const nawal_blob_sender *s); /* bytes queued so far, from 0 */
uint64_t nawal_blob_sender_size(const nawal_blob_sender *s);
void nawal_blob_sender_free(nawal_blob_sender *s);

/* ---- receiver ---- */
typedef struct nawal_blob_receiver nawal_blob_receiver;

/* Receives the blob `cid` into `path` via `<path>.part`, resuming from an
 * existing .part file. max_size (0 = no limit) refuses larger blobs. */
int nawal_blob_receiver_open(nawal_blob_receiver **out, const char *path, const uint8_t cid[32],
                             uint64_t max_size, char *err, size_t errlen);
/* Bytes held so far: the offset to ask for. */
uint64_t nawal_blob_receiver_offset(const nawal_blob_receiver *r);
/* total_size from the first chunk; 0 before any arrived. */
uint64_t nawal_blob_receiver_total(const nawal_blob_receiver *r);
/* The BlobRequest to send (after opening and after every reconnect). */
int nawal_blob_receiver_request(const nawal_blob_receiver *r, uint8_t *buf, size_t cap, size_t *len);
/* One received BlobChunk message. Returns 0 = more to come, 1 = complete:
 * verified and renamed into place, -1 = error (the transfer can be resumed
 * with a new request unless the CID did not match, which removes .part). */
int nawal_blob_receiver_chunk(nawal_blob_receiver *r, const uint8_t *msg, size_t len, char *err, size_t errlen);
/* The same for len bytes at offset of a blob of total bytes that came
 * another way (an HTTP GET's body, transport.h's nawal_ws_client_fetch):
 * offset must be the bytes held so far (nawal_blob_receiver_offset), total
 * the same for every call; any block size. */
int nawal_blob_receiver_write(nawal_blob_receiver *r, uint64_t offset, const uint8_t *data, size_t len,
                              uint64_t total, char *err, size_t errlen);
/* 1 when msg is a BlobChunk left over from an earlier transfer, which the
 * caller drops without counting it as an error: a chunk of another blob
 * than r's, or one at an offset below the bytes r holds (a duplicate). A
 * sender queues up to its window of chunks ahead, so chunks of a transfer
 * that a new BlobRequest replaced still arrive after the request. 0 for
 * anything else, which nawal_blob_receiver_chunk() then checks (a malformed
 * message, a gap, a changed total size... are errors there). */
int nawal_blob_receiver_stale(nawal_blob_receiver *r, const uint8_t *msg, size_t len);
/* Stops; an incomplete .part file stays for a later resume. */
void nawal_blob_receiver_free(nawal_blob_receiver *r);

#endif
