/* blobstream.c - resumable chunked blob transfer (see blobstream.h).
 *
 * Memory: the sender holds one 1 MiB read buffer and one encoded chunk; the
 * receiver decodes each chunk into a fixed arena (protobuf-c allocations
 * beyond it fail the decode, so a hostile chunk cannot make it allocate
 * more) and its hashing thread reads the .part file back through one 1 MiB
 * buffer. Nothing grows with the blob size. */
#include "blobstream.h"

#include "cid.h"
#include "error.h"
#include "fileio.h"
#include "nawal.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HASH_BACKLOG ((uint64_t)64 << 20) /* writer waits when hashing is this far behind */

/* ---- messages ----------------------------------------------------------- */

static int ws_sink_send(void *ctx, const uint8_t *msg, size_t len) { return nawal_ws_send(ctx, msg, len); }
static size_t ws_sink_pending(void *ctx) { return nawal_ws_queued(ctx); }

void nawal_blob_sink_ws(nawal_blob_sink *sink, nawal_ws_conn *c) {
    sink->send = ws_sink_send;
    sink->pending = ws_sink_pending;
    sink->ctx = c;
}

int nawal_blob_request_encode(uint8_t *buf, size_t cap, size_t *len, const uint8_t cid[32], uint64_t offset) {
    Nawal__BlobRequest req = NAWAL__BLOB_REQUEST__INIT;
    req.cid.data = (uint8_t *)cid;
    req.cid.len = NAWAL_CID_BYTES;
    req.offset = offset;
    size_t n = nawal__blob_request__get_packed_size(&req);
    if (n > cap) return -1;
    *len = nawal__blob_request__pack(&req, buf);
    return 0;
}

int nawal_blob_request_decode(const uint8_t *msg, size_t len, uint8_t cid[32], uint64_t *offset,
                              char *err, size_t errlen) {
    if (len > NAWAL_BLOB_REQUEST_MAX) return nawal_fail(err, errlen, "BlobRequest of %zu bytes is too long", len);
    Nawal__BlobRequest *req = nawal__blob_request__unpack(NULL, len, msg);
    if (!req) return nawal_fail(err, errlen, "malformed BlobRequest");
    int rc = 0;
    if (req->cid.len != NAWAL_CID_BYTES) rc = nawal_fail(err, errlen, "BlobRequest: CID of %zu bytes", req->cid.len);
    else {
        memcpy(cid, req->cid.data, NAWAL_CID_BYTES);
        *offset = req->offset;
    }
    nawal__blob_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- sender ------------------------------------------------------------- */

struct nawal_blob_sender {
    int fd;
    uint8_t cid[NAWAL_CID_BYTES];
    uint64_t size, offset;       /* file size, next byte to read */
    size_t window;
    int done;
    uint8_t *rbuf;               /* NAWAL_BLOB_CHUNK_BYTES */
    uint8_t *msg;                /* encoded chunk waiting for the sink */
    size_t msg_len;
    int msg_ready;
};

int nawal_blob_sender_open(nawal_blob_sender **out, const char *path, const uint8_t cid[32], uint64_t offset,
                           size_t window, char *err, size_t errlen) {
    *out = NULL;
    nawal_blob_sender *s = calloc(1, sizeof *s);
    if (!s) return nawal_fail(err, errlen, "out of memory");
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) {
        nawal_fail(err, errlen, "%s: %s", path, strerror(errno));
        free(s);
        return -1;
    }
    struct stat st;
    if (fstat(s->fd, &st) || !S_ISREG(st.st_mode)) {
        nawal_fail(err, errlen, "%s: not a regular file", path);
        nawal_blob_sender_free(s);
        return -1;
    }
    s->size = (uint64_t)st.st_size;
    if (offset > s->size) {
        nawal_fail(err, errlen, "%s: requested offset %" PRIu64 " is beyond its %" PRIu64 " bytes", path, offset, s->size);
        nawal_blob_sender_free(s);
        return -1;
    }
    memcpy(s->cid, cid, NAWAL_CID_BYTES);
    s->offset = offset;
    s->window = window ? window : NAWAL_BLOB_WINDOW;
    s->rbuf = malloc(NAWAL_BLOB_CHUNK_BYTES);
    s->msg = malloc(NAWAL_BLOB_CHUNK_MSG_MAX);
    if (!s->rbuf || !s->msg) {
        nawal_fail(err, errlen, "out of memory");
        nawal_blob_sender_free(s);
        return -1;
    }
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(s->fd, (off_t)offset, 0, POSIX_FADV_SEQUENTIAL);
#endif
    *out = s;
    return 0;
}

/* reads and encodes the next chunk into s->msg */
static int sender_next(nawal_blob_sender *s, char *err, size_t errlen) {
    uint64_t left = s->size - s->offset;
    size_t n = left < NAWAL_BLOB_CHUNK_BYTES ? (size_t)left : NAWAL_BLOB_CHUNK_BYTES;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(s->fd, s->rbuf + got, n - got, (off_t)(s->offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return nawal_fail(err, errlen, "reading blob at %" PRIu64 ": %s", s->offset + got, strerror(errno));
        if (r == 0) return nawal_fail(err, errlen, "blob file shrank while being sent (at %" PRIu64 ")", s->offset + got);
        got += (size_t)r;
    }
    Nawal__BlobChunk ch = NAWAL__BLOB_CHUNK__INIT;
    ch.cid.data = s->cid;
    ch.cid.len = NAWAL_CID_BYTES;
    ch.offset = s->offset;
    ch.data.data = s->rbuf;
    ch.data.len = n;
    ch.total_size = s->size;
    s->msg_len = nawal__blob_chunk__pack(&ch, s->msg);
    s->msg_ready = 1;
    s->offset += n;
    return 0;
}

int nawal_blob_sender_pump(nawal_blob_sender *s, const nawal_blob_sink *sink, char *err, size_t errlen) {
    while (!s->done) {
        if (!s->msg_ready) {
            if (sink->pending && sink->pending(sink->ctx) >= s->window) return 0;
            if (sender_next(s, err, errlen)) return -1;
        }
        if (sink->send(sink->ctx, s->msg, s->msg_len)) {
            if (errno == EAGAIN) return 0;
            return nawal_fail(err, errlen, "sending blob chunk: %s", strerror(errno));
        }
        s->msg_ready = 0;
        if (s->offset == s->size) s->done = 1;
    }
    return 1;
}

uint64_t nawal_blob_sender_offset(const nawal_blob_sender *s) { return s->offset; }
uint64_t nawal_blob_sender_size(const nawal_blob_sender *s) { return s->size; }

void nawal_blob_sender_free(nawal_blob_sender *s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    free(s->rbuf);
    free(s->msg);
    free(s);
}

/* ---- receiver ----------------------------------------------------------- */

/* bump allocator for decoding one chunk; reset before each decode */
typedef struct {
    uint8_t *base;
    size_t cap, used;
} arena;

#define ARENA_BYTES (NAWAL_BLOB_CHUNK_MSG_MAX + 16384)

static void *arena_alloc(void *data, size_t size) {
    arena *a = data;
    size_t at = (a->used + 15) & ~(size_t)15;
    if (at > a->cap || size > a->cap - at) return NULL;
    a->used = at + size;
    return a->base + at;
}

static void arena_free(void *data, void *p) {
    (void)data;
    (void)p;
}

struct nawal_blob_receiver {
    char *path, *part;
    int fd;
    uint8_t cid[NAWAL_CID_BYTES];
    uint64_t max_size, total;
    int have_total, complete, failed;
    arena ar;
    /* shared with the hashing thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int th_started, stop, hash_err;
    uint64_t written, hashed;
    nawal_cid_state hs;
    uint8_t *hbuf;               /* hashing thread's read buffer */
};

static void *hash_main(void *arg) {
    nawal_blob_receiver *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->hashed == r->written) pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        uint64_t at = r->hashed, left = r->written - at;
        pthread_mutex_unlock(&r->mu);
        size_t n = left < NAWAL_BLOB_CHUNK_BYTES ? (size_t)left : NAWAL_BLOB_CHUNK_BYTES;
        ssize_t got = pread(r->fd, r->hbuf, n, (off_t)at);
        int e = errno;
        if (got > 0) nawal_cid_update(&r->hs, r->hbuf, (size_t)got);
        pthread_mutex_lock(&r->mu);
        if (got < 0 && e == EINTR) continue;
        if (got <= 0) {
            r->hash_err = got < 0 ? e : EIO;
            pthread_cond_broadcast(&r->cv);
            break;
        }
        r->hashed = at + (uint64_t)got;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void hash_stop(nawal_blob_receiver *r) {
    if (!r->th_started) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    r->th_started = 0;
}

/* waits until the hash is within `lag` bytes of what was written; -1 on a read error */
static int hash_wait(nawal_blob_receiver *r, uint64_t lag) {
    pthread_mutex_lock(&r->mu);
    while (!r->hash_err && r->written - r->hashed > lag) pthread_cond_wait(&r->cv, &r->mu);
    int e = r->hash_err;
    pthread_mutex_unlock(&r->mu);
    if (e) errno = e;
    return e ? -1 : 0;
}

/* forget the .part file and start over from byte 0 */
static int receiver_restart(nawal_blob_receiver *r, char *err, size_t errlen) {
    hash_stop(r);
    if (ftruncate(r->fd, 0)) return nawal_fail(err, errlen, "%s: %s", r->part, strerror(errno));
    r->written = r->hashed = 0;
    r->stop = r->hash_err = 0;
    nawal_cid_init(&r->hs);
    if (pthread_create(&r->th, NULL, hash_main, r)) return nawal_fail(err, errlen, "cannot start the hashing thread");
    r->th_started = 1;
    return 0;
}

int nawal_blob_receiver_open(nawal_blob_receiver **out, const char *path, const uint8_t cid[32],
                             uint64_t max_size, char *err, size_t errlen) {
    *out = NULL;
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    nawal_blob_receiver *r = calloc(1, sizeof *r);
    if (!r) return nawal_fail(err, errlen, "out of memory");
    r->fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    size_t pl = strlen(path);
    r->path = malloc(pl + 1);
    r->part = malloc(pl + 6);
    r->ar.base = malloc(ARENA_BYTES);
    r->hbuf = malloc(NAWAL_BLOB_CHUNK_BYTES);
    if (!r->path || !r->part || !r->ar.base || !r->hbuf) {
        nawal_blob_receiver_free(r);
        return nawal_fail(err, errlen, "out of memory");
    }
    r->ar.cap = ARENA_BYTES;
    memcpy(r->path, path, pl + 1);
    memcpy(r->part, path, pl);
    memcpy(r->part + pl, ".part", 6);
    memcpy(r->cid, cid, NAWAL_CID_BYTES);
    r->max_size = max_size;
    r->fd = open(r->part, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct stat st;
    if (r->fd < 0 || fstat(r->fd, &st) || !S_ISREG(st.st_mode)) {
        nawal_fail(err, errlen, "%s: %s", r->part, r->fd < 0 ? strerror(errno) : "not a regular file");
        nawal_blob_receiver_free(r);
        return -1;
    }
    r->written = (uint64_t)st.st_size;
    nawal_cid_init(&r->hs);
    if (max_size && r->written > max_size) {
        /* a stale .part larger than any acceptable blob: start over */
        if (receiver_restart(r, err, errlen)) {
            nawal_blob_receiver_free(r);
            return -1;
        }
    } else {
        if (pthread_create(&r->th, NULL, hash_main, r)) {
            nawal_blob_receiver_free(r);
            return nawal_fail(err, errlen, "cannot start the hashing thread");
        }
        r->th_started = 1;
    }
    *out = r;
    return 0;
}

uint64_t nawal_blob_receiver_offset(const nawal_blob_receiver *r) { return r->written; }
uint64_t nawal_blob_receiver_total(const nawal_blob_receiver *r) { return r->have_total ? r->total : 0; }

int nawal_blob_receiver_request(const nawal_blob_receiver *r, uint8_t *buf, size_t cap, size_t *len) {
    return nawal_blob_request_encode(buf, cap, len, r->cid, r->written);
}

static int write_all(int fd, const uint8_t *p, size_t n, uint64_t at) {
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        at += (uint64_t)w;
    }
    return 0;
}

/* all bytes are in: compare the CID, then sync and rename, or remove */
static int receiver_finish(nawal_blob_receiver *r, char *err, size_t errlen) {
    if (hash_wait(r, 0)) return nawal_fail(err, errlen, "%s: reading back: %s", r->part, strerror(errno));
    hash_stop(r);
    uint8_t got[NAWAL_CID_BYTES];
    nawal_cid_final(&r->hs, got);
    if (!nawal_cid_equal(got, r->cid)) {
        char want_hex[NAWAL_CID_HEX_BYTES], got_hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(want_hex, r->cid);
        nawal_cid_to_hex(got_hex, got);
        unlink(r->part);
        r->failed = 1;
        return nawal_fail(err, errlen, "blob content ID mismatch: expected %s, received data hashes to %s "
                          "(partial file removed)", want_hex, got_hex);
    }
    if (fdatasync(r->fd)) return nawal_fail(err, errlen, "%s: sync: %s", r->part, strerror(errno));
    if (rename(r->part, r->path)) return nawal_fail(err, errlen, "renaming %s: %s", r->part, strerror(errno));
    nawal_fsync_parent_dir(r->path);
    r->complete = 1;
    return 1;
}

/* msg decoded into r's arena (valid until the next decode); NULL when too long or malformed */
static Nawal__BlobChunk *chunk_decode(nawal_blob_receiver *r, const uint8_t *msg, size_t len) {
    if (len > NAWAL_BLOB_CHUNK_MSG_MAX) return NULL;
    r->ar.used = 0;
    ProtobufCAllocator alloc = { arena_alloc, arena_free, &r->ar };
    return nawal__blob_chunk__unpack(&alloc, len, msg);
}

int nawal_blob_receiver_stale(nawal_blob_receiver *r, const uint8_t *msg, size_t len) {
    if (r->complete || r->failed) return 0;
    const Nawal__BlobChunk *ch = chunk_decode(r, msg, len);
    if (!ch || ch->cid.len != NAWAL_CID_BYTES) return 0;
    return !nawal_cid_equal(ch->cid.data, r->cid) || ch->offset < r->written;
}

int nawal_blob_receiver_write(nawal_blob_receiver *r, uint64_t offset, const uint8_t *data, size_t len,
                              uint64_t total, char *err, size_t errlen) {
    if (r->complete || r->failed) return nawal_fail(err, errlen, "blob transfer already %s", r->complete ? "complete" : "failed");
    if (r->max_size && total > r->max_size)
        return nawal_fail(err, errlen, "blob of %" PRIu64 " bytes exceeds the %" PRIu64 "-byte limit", total, r->max_size);
    if (!r->have_total) {
        if (total < r->written) {
            /* the .part file cannot be a prefix of this blob */
            if (receiver_restart(r, err, errlen)) return -1;
            return nawal_fail(err, errlen, "partial file longer than the blob (%" PRIu64 " bytes): discarded, "
                              "request again from 0", total);
        }
        r->total = total;
        r->have_total = 1;
    } else if (total != r->total) {
        return nawal_fail(err, errlen, "the blob's total size changed from %" PRIu64 " to %" PRIu64, r->total, total);
    }
    if (offset != r->written)
        return nawal_fail(err, errlen, "bytes at offset %" PRIu64 ", expected %" PRIu64, offset, r->written);
    if (len > r->total - r->written)
        return nawal_fail(err, errlen, "bytes run past the blob's %" PRIu64 " bytes", r->total);
    if (len == 0 && r->written < r->total) return nawal_fail(err, errlen, "no bytes before the end of the blob");
    if (len) {
        if (write_all(r->fd, data, len, r->written))
            return nawal_fail(err, errlen, "%s: write: %s", r->part, strerror(errno));
        pthread_mutex_lock(&r->mu);
        r->written += len;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (r->written == r->total) return receiver_finish(r, err, errlen);
    if (hash_wait(r, HASH_BACKLOG)) return nawal_fail(err, errlen, "%s: reading back: %s", r->part, strerror(errno));
    return 0;
}

int nawal_blob_receiver_chunk(nawal_blob_receiver *r, const uint8_t *msg, size_t len, char *err, size_t errlen) {
    if (r->complete || r->failed) return nawal_fail(err, errlen, "blob transfer already %s", r->complete ? "complete" : "failed");
    if (len > NAWAL_BLOB_CHUNK_MSG_MAX) return nawal_fail(err, errlen, "BlobChunk of %zu bytes is too long", len);
    Nawal__BlobChunk *ch = chunk_decode(r, msg, len);
    if (!ch) return nawal_fail(err, errlen, "malformed BlobChunk");
    if (ch->cid.len != NAWAL_CID_BYTES || !nawal_cid_equal(ch->cid.data, r->cid))
        return nawal_fail(err, errlen, "BlobChunk for another blob");
    if (ch->data.len > NAWAL_BLOB_CHUNK_BYTES)
        return nawal_fail(err, errlen, "BlobChunk carries %zu bytes (limit %zu)", ch->data.len, NAWAL_BLOB_CHUNK_BYTES);
    return nawal_blob_receiver_write(r, ch->offset, ch->data.data, ch->data.len, ch->total_size, err, errlen);
}

void nawal_blob_receiver_free(nawal_blob_receiver *r) {
    if (!r) return;
    hash_stop(r);
    if (r->fd >= 0) close(r->fd);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->path);
    free(r->part);
    free(r->ar.base);
    free(r->hbuf);
    free(r);
}
