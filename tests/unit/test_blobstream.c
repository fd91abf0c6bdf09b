/* test_blobstream.c - chunked blob streaming: the receiver's checks on
 * every chunk (CID, offset, sizes, malformed input), the chunks it drops as
 * left over from a replaced transfer or repeated, CID verification at the
 * end (mismatch removes the partial file), resume from a .part file, the
 * sender's window, and over loopback TLS a 64 MiB blob streamed and verified
 * plus transfers cut mid-way (by either end) that resume and complete. */
#include "blobstream.h"
#include "cid.h"
#include "nawal.pb-c.h"
#include "test_util.h"
#include "ws_test_util.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/stat.h>

#define MiB ((size_t)1 << 20)

typedef struct {
    char dir[64];
    char src[128], dst[128], part[160];
} tmp_paths;

static void tmp_make(tmp_paths *t) {
    snprintf(t->dir, sizeof t->dir, "/tmp/nawal-blob-XXXXXX");
    cr_assert(mkdtemp(t->dir));
    snprintf(t->src, sizeof t->src, "%s/src.bin", t->dir);
    snprintf(t->dst, sizeof t->dst, "%s/dst.bin", t->dir);
    snprintf(t->part, sizeof t->part, "%s.part", t->dst);
}

static void tmp_remove(tmp_paths *t) {
    unlink(t->src);
    unlink(t->dst);
    unlink(t->part);
    rmdir(t->dir);
}

/* random file of `size` bytes, written 1 MiB at a time; returns its CID */
static void make_file(const char *path, uint64_t size, uint64_t *rng, uint8_t cid[32]) {
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    uint8_t *buf = malloc(MiB);
    nawal_cid_state st;
    nawal_cid_init(&st);
    for (uint64_t done = 0; done < size;) {
        size_t n = size - done < MiB ? (size_t)(size - done) : MiB;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = test_rand_u64(rng);
            memcpy(buf + i, &v, n - i < 8 ? n - i : 8);
        }
        cr_assert_eq(fwrite(buf, 1, n, f), n);
        nawal_cid_update(&st, buf, n);
        done += n;
    }
    nawal_cid_final(&st, cid);
    fclose(f);
    free(buf);
}

static int64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

static int same_files(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    if (!fa || !fb) {
        if (fa) fclose(fa);
        if (fb) fclose(fb);
        return 0;
    }
    uint8_t *x = malloc(MiB), *y = malloc(MiB);
    int same = 1;
    for (;;) {
        size_t n = fread(x, 1, MiB, fa), m = fread(y, 1, MiB, fb);
        if (n != m || memcmp(x, y, n)) {
            same = 0;
            break;
        }
        if (!n) break;
    }
    free(x);
    free(y);
    fclose(fa);
    fclose(fb);
    return same;
}

/* ---- a sink that keeps the messages, with a pretend transport queue ---- */

typedef struct {
    uint8_t *msg[64];
    size_t len[64];
    int n, drained; /* pending = n - drained */
    int refuse;     /* answer EAGAIN */
} capture;

static int cap_send(void *ctx, const uint8_t *msg, size_t len) {
    capture *c = ctx;
    if (c->refuse || c->n == 64) {
        errno = EAGAIN;
        return -1;
    }
    c->msg[c->n] = malloc(len ? len : 1);
    memcpy(c->msg[c->n], msg, len);
    c->len[c->n++] = len;
    return 0;
}

static size_t cap_pending(void *ctx) {
    capture *c = ctx;
    return (size_t)(c->n - c->drained);
}

static void cap_free(capture *c) {
    for (int i = 0; i < c->n; i++) free(c->msg[i]);
    memset(c, 0, sizeof *c);
}

/* every chunk message of `path` from `offset`, window unlimited */
static void all_chunks(capture *cap, const char *path, const uint8_t cid[32], uint64_t offset) {
    char err[256];
    nawal_blob_sender *s;
    cr_assert_eq(nawal_blob_sender_open(&s, path, cid, offset, 64, err, sizeof err), 0, "%s", err);
    nawal_blob_sink sink = { cap_send, cap_pending, cap };
    cr_assert_eq(nawal_blob_sender_pump(s, &sink, err, sizeof err), 1, "%s", err);
    nawal_blob_sender_free(s);
}

Test(blobstream, receiver_checks_every_chunk) {
    uint64_t rng = test_seed("receiver_checks_every_chunk");
    tmp_paths t;
    tmp_make(&t);
    uint8_t cid[32], other[32];
    make_file(t.src, 3 * MiB + 12345, &rng, cid);
    memcpy(other, cid, 32);
    other[0] ^= 1;
    capture cap = { 0 };
    all_chunks(&cap, t.src, cid, 0);
    cr_assert_eq(cap.n, 4);

    char err[256];
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_offset(r), 0);
    /* out of order */
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[1], cap.len[1], err, sizeof err), -1);
    cr_assert(strstr(err, "offset"), "%s", err);
    /* garbage and truncation */
    cr_assert_eq(nawal_blob_receiver_chunk(r, (const uint8_t *)"\xff\xff\xff\xff", 4, err, sizeof err), -1);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0] / 2, err, sizeof err), -1);
    /* too long to be a chunk at all */
    uint8_t *huge = calloc(1, NAWAL_BLOB_CHUNK_MSG_MAX + 1);
    cr_assert_eq(nawal_blob_receiver_chunk(r, huge, NAWAL_BLOB_CHUNK_MSG_MAX + 1, err, sizeof err), -1);
    free(huge);
    /* a chunk of another blob */
    {
        Nawal__BlobChunk ch = NAWAL__BLOB_CHUNK__INIT;
        ch.cid.data = other;
        ch.cid.len = 32;
        ch.data.data = (uint8_t *)"abc";
        ch.data.len = 3;
        ch.total_size = 3 * MiB + 12345;
        uint8_t buf[128];
        size_t n = nawal__blob_chunk__pack(&ch, buf);
        cr_assert_eq(nawal_blob_receiver_chunk(r, buf, n, err, sizeof err), -1);
        cr_assert(strstr(err, "another blob"), "%s", err);
    }
    cr_assert_eq(nawal_blob_receiver_offset(r), 0);
    /* in order works; a repeat is refused; a changed total is refused */
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0], err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0], err, sizeof err), -1);
    {
        Nawal__BlobChunk ch = NAWAL__BLOB_CHUNK__INIT;
        ch.cid.data = cid;
        ch.cid.len = 32;
        ch.offset = MiB;
        ch.data.data = (uint8_t *)"abc";
        ch.data.len = 3;
        ch.total_size = 5 * MiB;
        uint8_t buf[128];
        size_t n = nawal__blob_chunk__pack(&ch, buf);
        cr_assert_eq(nawal_blob_receiver_chunk(r, buf, n, err, sizeof err), -1);
        cr_assert(strstr(err, "total size"), "%s", err);
        /* an empty chunk before the end */
        ch.total_size = 3 * MiB + 12345;
        ch.data.len = 0;
        n = nawal__blob_chunk__pack(&ch, buf);
        cr_assert_eq(nawal_blob_receiver_chunk(r, buf, n, err, sizeof err), -1);
    }
    cr_assert_eq(nawal_blob_receiver_total(r), 3 * MiB + 12345);
    for (int i = 1; i < 3; i++)
        cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err), 0, "%s", err);
    cr_assert_eq(file_size(t.dst), -1, "renamed before complete");
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[3], cap.len[3], err, sizeof err), 1, "%s", err);
    cr_assert(same_files(t.src, t.dst));
    cr_assert_eq(file_size(t.part), -1);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[3], cap.len[3], err, sizeof err), -1);
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    tmp_remove(&t);
}

/* What a receiver drops as left over from an earlier transfer (nawal_blob_receiver_stale): the
 * chunks of another blob still queued when a new BlobRequest replaced its transfer, and repeats
 * of chunks it holds; not a gap, garbage or a chunk of this blob it still needs. */
Test(blobstream, stale_chunks_are_told_apart) {
    uint64_t rng = test_seed("stale_chunks_are_told_apart");
    tmp_paths t;
    tmp_make(&t);
    char src2[160];
    snprintf(src2, sizeof src2, "%s/src2.bin", t.dir);
    uint8_t cid[32], cid2[32];
    make_file(t.src, 3 * MiB + 5, &rng, cid);
    make_file(src2, 2 * MiB + 9, &rng, cid2);
    capture cap = { 0 }, old = { 0 };
    all_chunks(&cap, t.src, cid, 0);
    all_chunks(&old, src2, cid2, 0);
    char err[256];
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    /* the replaced transfer's chunks, before and between this one's */
    for (int i = 0; i < old.n; i++) cr_assert(nawal_blob_receiver_stale(r, old.msg[i], old.len[i]), "old chunk %d", i);
    cr_assert(!nawal_blob_receiver_stale(r, cap.msg[1], cap.len[1]), "a gap is not stale");
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[1], cap.len[1], err, sizeof err), -1);
    cr_assert(!nawal_blob_receiver_stale(r, (const uint8_t *)"\xff\xff\xff\xff", 4), "garbage is not stale");
    for (int i = 0; i < cap.n; i++) {
        cr_assert(!nawal_blob_receiver_stale(r, cap.msg[i], cap.len[i]), "chunk %d is the next one", i);
        int rc = nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err);
        cr_assert_eq(rc, i + 1 == cap.n, "chunk %d: %s", i, err);
        if (i + 1 < cap.n) { /* a repeat of what is held, and an old chunk, in between */
            cr_assert(nawal_blob_receiver_stale(r, cap.msg[i], cap.len[i]), "chunk %d again", i);
            cr_assert(nawal_blob_receiver_stale(r, cap.msg[0], cap.len[0]), "chunk 0 again");
            cr_assert(nawal_blob_receiver_stale(r, old.msg[i % old.n], old.len[i % old.n]));
        }
    }
    cr_assert(same_files(t.src, t.dst));
    /* once complete, nothing is stale: a chunk is refused as after the end */
    cr_assert(!nawal_blob_receiver_stale(r, cap.msg[0], cap.len[0]));
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    cap_free(&old);
    unlink(src2);
    tmp_remove(&t);
}

Test(blobstream, cid_mismatch_removes_partial_file) {
    uint64_t rng = test_seed("cid_mismatch_removes_partial_file");
    tmp_paths t;
    tmp_make(&t);
    uint8_t cid[32];
    make_file(t.src, 2 * MiB + 7, &rng, cid);
    capture cap = { 0 };
    all_chunks(&cap, t.src, cid, 0);
    /* the receiver expects different content under the same chunks' CID... */
    uint8_t wrong[32];
    memcpy(wrong, cid, 32);
    wrong[31] ^= 0x80;
    /* ...so re-encode the chunks for `wrong`, as a lying sender would */
    char err[256];
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, wrong, 0, err, sizeof err), 0, "%s", err);
    int rc = 0;
    for (int i = 0; i < cap.n && rc == 0; i++) {
        Nawal__BlobChunk *ch = nawal__blob_chunk__unpack(NULL, cap.len[i], cap.msg[i]);
        cr_assert(ch);
        memcpy(ch->cid.data, wrong, 32);
        uint8_t *buf = malloc(nawal__blob_chunk__get_packed_size(ch));
        size_t n = nawal__blob_chunk__pack(ch, buf);
        rc = nawal_blob_receiver_chunk(r, buf, n, err, sizeof err);
        free(buf);
        nawal__blob_chunk__free_unpacked(ch, NULL);
    }
    cr_assert_eq(rc, -1);
    cr_assert(strstr(err, "mismatch"), "%s", err);
    cr_assert_eq(file_size(t.part), -1, "partial file left behind");
    cr_assert_eq(file_size(t.dst), -1);
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    tmp_remove(&t);
}

Test(blobstream, resume_from_partial_file) {
    uint64_t rng = test_seed("resume_from_partial_file");
    tmp_paths t;
    tmp_make(&t);
    uint8_t cid[32];
    make_file(t.src, 5 * MiB + 99, &rng, cid);
    capture cap = { 0 };
    all_chunks(&cap, t.src, cid, 0);
    char err[256];
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 2; i++) cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err), 0);
    nawal_blob_receiver_free(r); /* connection lost */
    cap_free(&cap);
    cr_assert_eq(file_size(t.part), (int64_t)(2 * MiB));

    /* a new receiver picks up the .part file and asks for the rest */
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_offset(r), 2 * MiB);
    uint8_t req[NAWAL_BLOB_REQUEST_MAX];
    size_t rl;
    cr_assert_eq(nawal_blob_receiver_request(r, req, sizeof req, &rl), 0);
    uint8_t rcid[32];
    uint64_t off = 0;
    cr_assert_eq(nawal_blob_request_decode(req, rl, rcid, &off, err, sizeof err), 0, "%s", err);
    cr_assert_eq(off, 2 * MiB);
    cr_assert(nawal_cid_equal(rcid, cid));
    all_chunks(&cap, t.src, rcid, off);
    cr_assert_eq(cap.n, 4);
    int rc = 0;
    for (int i = 0; i < cap.n; i++) rc = nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err);
    cr_assert_eq(rc, 1, "%s", err);
    cr_assert(same_files(t.src, t.dst));
    nawal_blob_receiver_free(r);
    cap_free(&cap);

    /* a .part longer than the blob is discarded and the transfer restarts from 0 */
    unlink(t.dst);
    FILE *f = fopen(t.part, "wb");
    uint8_t *junk = calloc(1, 6 * MiB);
    fwrite(junk, 1, 6 * MiB, f);
    fclose(f);
    free(junk);
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_offset(r), 6 * MiB);
    all_chunks(&cap, t.src, cid, 0);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0], err, sizeof err), -1);
    cr_assert_eq(nawal_blob_receiver_offset(r), 0, "%s", err);
    rc = 0;
    for (int i = 0; i < cap.n; i++) rc = nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err);
    cr_assert_eq(rc, 1, "%s", err);
    cr_assert(same_files(t.src, t.dst));
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    tmp_remove(&t);
}

Test(blobstream, limits_empty_blob_and_requests) {
    uint64_t rng = test_seed("limits_empty_blob_and_requests");
    tmp_paths t;
    tmp_make(&t);
    uint8_t cid[32];
    char err[256];
    /* the empty blob: one empty chunk completes it */
    make_file(t.src, 0, &rng, cid);
    capture cap = { 0 };
    all_chunks(&cap, t.src, cid, 0);
    cr_assert_eq(cap.n, 1);
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0], err, sizeof err), 1, "%s", err);
    cr_assert_eq(file_size(t.dst), 0);
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    unlink(t.dst);

    /* max_size refuses a larger blob at its first chunk */
    make_file(t.src, 2 * MiB, &rng, cid);
    all_chunks(&cap, t.src, cid, 0);
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, MiB, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blob_receiver_chunk(r, cap.msg[0], cap.len[0], err, sizeof err), -1);
    cr_assert(strstr(err, "limit"), "%s", err);
    nawal_blob_receiver_free(r);
    cap_free(&cap);

    /* a request beyond the end, and a resumed request at the very end (one empty chunk) */
    nawal_blob_sender *s;
    cr_assert_eq(nawal_blob_sender_open(&s, t.src, cid, 2 * MiB + 1, 0, err, sizeof err), -1);
    cr_assert_eq(nawal_blob_sender_open(&s, "/nonexistent/blob", cid, 0, 0, err, sizeof err), -1);
    all_chunks(&cap, t.src, cid, 2 * MiB);
    cr_assert_eq(cap.n, 1);
    cap_free(&cap);

    /* malformed requests */
    uint64_t off;
    uint8_t rc[32];
    cr_assert_eq(nawal_blob_request_decode((const uint8_t *)"\x0a\x03xyz", 5, rc, &off, err, sizeof err), -1);
    cr_assert_eq(nawal_blob_request_decode((const uint8_t *)"\xff", 1, rc, &off, err, sizeof err), -1);
    tmp_remove(&t);
}

Test(blobstream, sender_window_and_back_pressure) {
    uint64_t rng = test_seed("sender_window_and_back_pressure");
    tmp_paths t;
    tmp_make(&t);
    uint8_t cid[32];
    make_file(t.src, 20 * MiB + 5, &rng, cid);
    char err[256];
    nawal_blob_sender *s;
    cr_assert_eq(nawal_blob_sender_open(&s, t.src, cid, 0, 8, err, sizeof err), 0, "%s", err);
    capture cap = { 0 };
    nawal_blob_sink sink = { cap_send, cap_pending, &cap };
    cr_assert_eq(nawal_blob_sender_pump(s, &sink, err, sizeof err), 0);
    cr_assert_eq(cap.n, 8, "window of 8 not respected: %d queued", cap.n);
    cr_assert_eq(nawal_blob_sender_pump(s, &sink, err, sizeof err), 0);
    cr_assert_eq(cap.n, 8);
    cap.drained = 3; /* three went out */
    cr_assert_eq(nawal_blob_sender_pump(s, &sink, err, sizeof err), 0);
    cr_assert_eq(cap.n, 11);
    /* a full transport: nothing lost, retried on the next pump */
    cap.drained = 11;
    cap.refuse = 1;
    cr_assert_eq(nawal_blob_sender_pump(s, &sink, err, sizeof err), 0);
    cr_assert_eq(cap.n, 11);
    cap.refuse = 0;
    int rc;
    while ((rc = nawal_blob_sender_pump(s, &sink, err, sizeof err)) == 0) cap.drained = cap.n;
    cr_assert_eq(rc, 1, "%s", err);
    cr_assert_eq(cap.n, 21);
    cr_assert_eq(nawal_blob_sender_offset(s), 20 * MiB + 5);
    nawal_blob_sender_free(s);
    /* and the chunks reassemble into the file */
    nawal_blob_receiver *r;
    cr_assert_eq(nawal_blob_receiver_open(&r, t.dst, cid, 0, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < cap.n; i++) rc = nawal_blob_receiver_chunk(r, cap.msg[i], cap.len[i], err, sizeof err);
    cr_assert_eq(rc, 1, "%s", err);
    cr_assert(same_files(t.src, t.dst));
    nawal_blob_receiver_free(r);
    cap_free(&cap);
    tmp_remove(&t);
}

/* ---- over loopback TLS: the server serves one blob, the client downloads it ---- */

typedef struct {
    const char *path;
    uint8_t cid[32];
    int cut_after;               /* server closes the connection after this many chunks (0 = never) */
    pthread_mutex_t mu;
    uint64_t offsets[16];        /* requested offsets, in order */
    int nreq, errors;
    char err[256];
} blob_srv;

typedef struct {
    nawal_blob_sender *snd;
    nawal_blob_sink sink;
} blob_srv_conn;

static void bs_pump(nawal_ws_conn *c, blob_srv *bs) {
    blob_srv_conn *bc = nawal_ws_get_data(c);
    if (!bc || !bc->snd) return;
    char err[256];
    if (nawal_blob_sender_pump(bc->snd, &bc->sink, err, sizeof err) < 0) {
        pthread_mutex_lock(&bs->mu);
        bs->errors++;
        snprintf(bs->err, sizeof bs->err, "%s", err);
        pthread_mutex_unlock(&bs->mu);
        nawal_ws_close(c, "sender error");
        return;
    }
    if (bs->cut_after && nawal_blob_sender_offset(bc->snd) >= (uint64_t)bs->cut_after * MiB) {
        bs->cut_after = 0; /* once */
        nawal_ws_close(c, "cut by the test");
    }
}

static void bs_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    blob_srv *bs = user;
    blob_srv_conn *bc = nawal_ws_get_data(c);
    uint8_t cid[32];
    uint64_t off;
    char err[256];
    int bad = nawal_blob_request_decode(msg, len, cid, &off, err, sizeof err) || !nawal_cid_equal(cid, bs->cid);
    pthread_mutex_lock(&bs->mu);
    if (!bad && bs->nreq < 16) bs->offsets[bs->nreq++] = off;
    pthread_mutex_unlock(&bs->mu);
    if (bad || bc->snd || nawal_blob_sender_open(&bc->snd, bs->path, cid, off, 0, err, sizeof err)) {
        nawal_ws_close(c, "bad request");
        return;
    }
    nawal_blob_sink_ws(&bc->sink, c);
    bs_pump(c, bs);
}

static void bs_open(nawal_ws_conn *c, void *user) {
    (void)user;
    nawal_ws_set_data(c, calloc(1, sizeof(blob_srv_conn)));
}

static void bs_drain(nawal_ws_conn *c, void *user) { bs_pump(c, user); }

static void bs_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)reason;
    (void)user;
    blob_srv_conn *bc = nawal_ws_get_data(c);
    if (bc) nawal_blob_sender_free(bc->snd);
    free(bc);
}

typedef struct {
    nawal_blob_receiver *rx;
    int opened, closed, done, failed, chunks, cut_after, connections;
    char err[256];
} blob_cli;

static void bc_open(nawal_ws_conn *c, void *user) {
    blob_cli *b = user;
    b->opened = 1;
    uint8_t req[NAWAL_BLOB_REQUEST_MAX];
    size_t n;
    nawal_blob_receiver_request(b->rx, req, sizeof req, &n);
    if (nawal_ws_send(c, req, n)) b->failed = 1;
}

static void bc_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    blob_cli *b = user;
    if (b->done || b->failed) return;
    int rc = nawal_blob_receiver_chunk(b->rx, msg, len, b->err, sizeof b->err);
    b->chunks++;
    if (rc == 1) {
        b->done = 1;
        nawal_ws_close(c, "done");
    } else if (rc < 0) {
        b->failed = 1;
        nawal_ws_close(c, "bad chunk");
    } else if (b->cut_after && b->chunks == b->cut_after) {
        b->cut_after = 0; /* once */
        nawal_ws_close(c, "cut by the test");
    }
}

static void bc_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)c;
    blob_cli *b = user;
    b->closed = 1;
    if (!b->done && !b->failed && !b->err[0]) snprintf(b->err, sizeof b->err, "%s", reason);
}

static int bc_ended(void *p) {
    blob_cli *b = p;
    return b->closed;
}

static long vm_hwm_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) v = atol(line + 6);
    if (f) fclose(f);
    return v;
}

/* downloads until complete, reconnecting after every cut; returns connections made */
static int download(nawal_ws_client *cl, int port, blob_cli *b) {
    char err[256];
    while (!b->done && !b->failed && b->connections < 6) {
        b->opened = b->closed = 0;
        b->chunks = 0;
        b->err[0] = 0;
        nawal_ws_conn *c = nawal_ws_client_connect(cl, "127.0.0.1", port, "/", err, sizeof err);
        cr_assert(c, "connect: %s", err);
        b->connections++;
        cr_assert(wt_client_until(cl, bc_ended, b, 50), "transfer stalled after %d chunks", b->chunks);
    }
    return b->connections;
}

static void blob_over_tls(uint64_t size, int server_cut, int client_cut, int expect_connections) {
    uint64_t rng = test_seed("blob_over_tls");
    tmp_paths t;
    tmp_make(&t);
    wt_tls tls;
    cr_assert_eq(wt_tls_make(&tls), 0, "openssl could not make a test certificate");
    blob_srv bs = { 0 };
    pthread_mutex_init(&bs.mu, NULL);
    bs.path = t.src;
    bs.cut_after = server_cut;
    make_file(t.src, size, &rng, bs.cid);

    char err[256];
    nawal_ws_config scfg = { 0 };
    scfg.cert_file = tls.cert;
    scfg.key_file = tls.key;
    scfg.bind_addr = "127.0.0.1";
    nawal_ws_handlers sh = { bs_open, bs_message, bs_drain, bs_close, &bs };
    wt_server ws = { 0 };
    ws.srv = nawal_ws_server_new(&scfg, &sh, err, sizeof err);
    cr_assert(ws.srv, "server: %s", err);
    int port = nawal_ws_server_port(ws.srv);
    cr_assert_eq(wt_server_start(&ws), 0);

    blob_cli b = { 0 };
    b.cut_after = client_cut;
    nawal_ws_config ccfg = { 0 };
    ccfg.ca_file = tls.cert;
    nawal_ws_handlers ch = { bc_open, bc_message, NULL, bc_close, &b };
    nawal_ws_client *cl = nawal_ws_client_new(&ccfg, &ch, err, sizeof err);
    cr_assert(cl, "client: %s", err);
    cr_assert_eq(nawal_blob_receiver_open(&b.rx, t.dst, bs.cid, 0, err, sizeof err), 0, "%s", err);

    long hwm0 = vm_hwm_kib();
    double t0 = wt_now();
    int conns = download(cl, port, &b);
    double dt = wt_now() - t0;
    long hwm1 = vm_hwm_kib();
    fprintf(stderr, "[blob_over_tls] %.0f MiB in %.2f s (%.0f MB/s), %d connection(s), peak RSS +%ld MiB\n",
            (double)size / MiB, dt, (double)size / dt / 1e6, conns, (hwm1 - hwm0) / 1024);
    cr_assert(b.done, "not complete: %s (failed %d)", b.err, b.failed);
    cr_assert_eq(conns, expect_connections);
    cr_assert(same_files(t.src, t.dst), "received file differs");
    cr_assert_eq(file_size(t.part), -1);
    pthread_mutex_lock(&bs.mu);
    cr_assert_eq(bs.errors, 0, "%s", bs.err);
    cr_assert_eq(bs.nreq, expect_connections);
    cr_assert_eq(bs.offsets[0], 0);
    for (int i = 1; i < bs.nreq; i++) {
        /* each resume asks for exactly what the .part held: more than before, chunk-aligned */
        cr_assert_gt(bs.offsets[i], bs.offsets[i - 1]);
        cr_assert_eq(bs.offsets[i] % MiB, 0);
    }
    if (client_cut) cr_assert_eq(bs.offsets[1], (uint64_t)client_cut * MiB);
    pthread_mutex_unlock(&bs.mu);
#if !defined(__SANITIZE_ADDRESS__)
    /* both ends live in this process; neither may hold the blob in memory */
    cr_assert_lt(hwm1 - hwm0, 48 * 1024, "peak RSS grew by %ld KiB for a %.0f MiB blob", hwm1 - hwm0,
                 (double)size / MiB);
#endif
    nawal_blob_receiver_free(b.rx);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
    wt_tls_remove(&tls);
    tmp_remove(&t);
}

Test(blobstream, tls_64mib_streamed_and_verified, .timeout = 120) {
    blob_over_tls(64 * MiB + 4321, 0, 0, 1);
}

Test(blobstream, tls_cut_by_receiver_resumes, .timeout = 120) {
    blob_over_tls(24 * MiB + 17, 0, 5, 2);
}

Test(blobstream, tls_cut_by_sender_resumes, .timeout = 120) {
    blob_over_tls(24 * MiB + 17, 9, 0, 2);
}
