/* blobstore.c - the content-addressed blob store under D/blobs (see
 * store.h): blobs/ab/cdef… named by the lowercase hex of their BLAKE2b-256
 * CID. A blob is written to a temp file, fsync'd, renamed into place and
 * the directory fsync'd, so after a crash it is either whole or absent;
 * temp files of dead writers are removed by nawal_blobstore_cleanup. */
#include "fileio.h"
#include "store.h"
#include "store_internal.h"
#include "cid.h"
#include "error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP_PREFIX ".tmp-"
#define IO_CHUNK ((size_t)1 << 20)

static int blob_dir(const nawal_store *s, char *out, size_t outlen) {
    int n = snprintf(out, outlen, "%s/%s", nawal_store_dir(s), NAWAL_STORE_BLOB_DIR);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* blobs/ab of a CID */
static int blob_subdir(const nawal_store *s, const uint8_t cid[32], char *out, size_t outlen) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    int n = snprintf(out, outlen, "%s/%s/%.2s", nawal_store_dir(s), NAWAL_STORE_BLOB_DIR, hex);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int nawal_blobstore_path(const nawal_store *s, const uint8_t cid[32], char *out, size_t outlen) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    int n = snprintf(out, outlen, "%s/%s/%.2s/%s", nawal_store_dir(s), NAWAL_STORE_BLOB_DIR, hex, hex + 2);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* mkstemp of "<dir>/.tmp-<pid>-XXXXXX"; the pid lets cleanup tell a dead
 * writer's leftovers from a live one's file in progress. */
static int make_temp(const char *dir, char *path, size_t pathlen, char *err, size_t errlen) {
    int n = snprintf(path, pathlen, "%s/" TMP_PREFIX "%ld-XXXXXX", dir, (long)getpid());
    if (n < 0 || (size_t)n >= pathlen) return nawal_fail(err, errlen, "%s: path too long", dir);
    int fd = mkstemp(path);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot create temp file: %s", dir, strerror(errno));
    return fd;
}

static int ensure_dir(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0700) == 0 || errno == EEXIST) return 0;
    return nawal_fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
}

/* fsync'd temp file -> its final place; then the directories. */
static int publish(nawal_store *s, const char *tmp, const uint8_t cid[32], char *err, size_t errlen) {
    char sub[4096], final[4096], top[4096];
    if (blob_subdir(s, cid, sub, sizeof sub) || nawal_blobstore_path(s, cid, final, sizeof final) ||
        blob_dir(s, top, sizeof top))
        return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    if (ensure_dir(sub, err, errlen)) return -1;
    if (rename(tmp, final) != 0) return nawal_fail(err, errlen, "%s: cannot rename into place: %s", final, strerror(errno));
    /* the new entry in blobs/ab, the new blobs/ab in blobs/ (and the temp
     * file's entry gone from wherever it was) */
    if (nawal_fsync_dir(sub) || nawal_fsync_dir(top))
        return nawal_fail(err, errlen, "%s: directory fsync failed: %s", sub, strerror(errno));
    return 0;
}

int nawal_blobstore_put_buffer(nawal_store *s, const void *buf, size_t len, uint8_t cid_out[32], char *err,
                               size_t errlen) {
    uint8_t cid[32];
    if (nawal_cid_of_buffer(cid, buf, len)) return nawal_fail(err, errlen, "blob store: hashing failed");
    char sub[4096], tmp[4200];
    if (blob_subdir(s, cid, sub, sizeof sub)) return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    if (ensure_dir(sub, err, errlen)) return -1;
    int fd = make_temp(sub, tmp, sizeof tmp, err, errlen);
    if (fd < 0) return -1;
    if (nawal_write_all(fd, buf, len) || fsync(fd)) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return nawal_fail(err, errlen, "%s: write failed: %s", tmp, strerror(e));
    }
    int rc = close(fd) != 0 ? nawal_fail(err, errlen, "%s: close failed: %s", tmp, strerror(errno)) : 0;
    if (rc == 0) rc = publish(s, tmp, cid, err, errlen);
    if (rc) {
        unlink(tmp);
        return -1;
    }
    memcpy(cid_out, cid, 32);
    return 0;
}

int nawal_blobstore_put_file(nawal_store *s, const char *path, uint8_t cid_out[32], uint64_t *size_out,
                             char *err, size_t errlen) {
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(in);
        return nawal_fail(err, errlen, "%s: not a regular file", path);
    }
    char top[4096], tmp[4200];
    if (blob_dir(s, top, sizeof top)) {
        close(in);
        return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    }
    uint8_t *chunk = malloc(IO_CHUNK);
    int fd = chunk ? make_temp(top, tmp, sizeof tmp, err, errlen) : nawal_fail(err, errlen, "out of memory");
    if (fd < 0) {
        free(chunk);
        close(in);
        return -1;
    }
    nawal_cid_state hs;
    int rc = nawal_cid_init(&hs) ? nawal_fail(err, errlen, "blob store: hashing failed") : 0;
    while (rc == 0) {
        ssize_t n = read(in, chunk, IO_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) rc = nawal_fail(err, errlen, "%s: read failed: %s", path, strerror(errno));
        if (n <= 0) break;
        nawal_cid_update(&hs, chunk, (size_t)n);
        if (nawal_write_all(fd, chunk, (size_t)n)) rc = nawal_fail(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
    }
    free(chunk);
    close(in);
    uint64_t total = hs.length;
    uint8_t cid[32];
    if (nawal_cid_final(&hs, cid) && rc == 0) rc = nawal_fail(err, errlen, "blob store: hashing failed");
    if (rc == 0 && fsync(fd) != 0) rc = nawal_fail(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = nawal_fail(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == 0) rc = publish(s, tmp, cid, err, errlen);
    if (rc) {
        unlink(tmp);
        return -1;
    }
    memcpy(cid_out, cid, 32);
    if (size_out) *size_out = total;
    return 0;
}

struct nawal_blob_writer {
    nawal_store *s;
    int fd;
    int failed;              /* a write failed: only abort is left */
    nawal_cid_state hs;
    char tmp[4200];
};

int nawal_blobstore_writer_open(nawal_store *s, nawal_blob_writer **out, char *err, size_t errlen) {
    *out = NULL;
    nawal_blob_writer *w = calloc(1, sizeof *w);
    if (!w) return nawal_fail(err, errlen, "out of memory");
    char top[4096];
    if (blob_dir(s, top, sizeof top)) {
        free(w);
        return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    }
    if (nawal_cid_init(&w->hs)) {
        free(w);
        return nawal_fail(err, errlen, "blob store: hashing failed");
    }
    w->s = s;
    w->fd = make_temp(top, w->tmp, sizeof w->tmp, err, errlen);
    if (w->fd < 0) {
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

int nawal_blobstore_writer_write(nawal_blob_writer *w, const void *buf, size_t len, char *err, size_t errlen) {
    if (w->failed) return nawal_fail(err, errlen, "%s: an earlier write failed", w->tmp);
    nawal_cid_update(&w->hs, buf, len);
    if (nawal_write_all(w->fd, buf, len)) {
        w->failed = 1;
        return nawal_fail(err, errlen, "%s: write failed: %s", w->tmp, strerror(errno));
    }
    return 0;
}

void nawal_blobstore_writer_abort(nawal_blob_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    unlink(w->tmp);
    free(w);
}

int nawal_blobstore_writer_commit(nawal_blob_writer *w, uint8_t cid_out[32], uint64_t *size_out, char *err,
                                  size_t errlen) {
    uint8_t cid[32];
    uint64_t total = w->hs.length;
    int rc = w->failed ? nawal_fail(err, errlen, "%s: an earlier write failed", w->tmp) : 0;
    if (rc == 0 && nawal_cid_final(&w->hs, cid)) rc = nawal_fail(err, errlen, "blob store: hashing failed");
    if (rc == 0 && fsync(w->fd) != 0) rc = nawal_fail(err, errlen, "%s: fsync failed: %s", w->tmp, strerror(errno));
    if (close(w->fd) != 0 && rc == 0) rc = nawal_fail(err, errlen, "%s: close failed: %s", w->tmp, strerror(errno));
    w->fd = -1;
    if (rc == 0) rc = publish(w->s, w->tmp, cid, err, errlen);
    if (rc) {
        nawal_blobstore_writer_abort(w);
        return -1;
    }
    free(w);
    memcpy(cid_out, cid, 32);
    if (size_out) *size_out = total;
    return 0;
}

int nawal_blobstore_adopt(nawal_store *s, const char *path, const uint8_t cid[32], char *err, size_t errlen) {
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return nawal_fail(err, errlen, "%s: not a regular file", path);
    return publish(s, path, cid, err, errlen);
}

int nawal_blobstore_has(nawal_store *s, const uint8_t cid[32]) {
    char path[4096];
    struct stat sb;
    if (nawal_blobstore_path(s, cid, path, sizeof path)) return 0;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int nawal_blobstore_open(nawal_store *s, const uint8_t cid[32], int verify, uint64_t *size_out, char *err,
                         size_t errlen) {
    char path[4096], hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    if (nawal_blobstore_path(s, cid, path, sizeof path)) return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "blob %s: %s", hex, errno == ENOENT ? "not in the blob store" : strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return nawal_fail(err, errlen, "blob %s: not a regular file", hex);
    }
    if (verify) {
        uint8_t *chunk = malloc(IO_CHUNK);
        uint8_t got[32];
        nawal_cid_state hs;
        int rc = !chunk || nawal_cid_init(&hs) ? nawal_fail(err, errlen, "out of memory or hashing failed") : 0;
        while (rc == 0) {
            ssize_t n = read(fd, chunk, IO_CHUNK);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) rc = nawal_fail(err, errlen, "blob %s: read failed: %s", hex, strerror(errno));
            if (n <= 0) break;
            nawal_cid_update(&hs, chunk, (size_t)n);
        }
        free(chunk);
        if (chunk && nawal_cid_final(&hs, got) && rc == 0) rc = nawal_fail(err, errlen, "blob %s: hashing failed", hex);
        if (rc == 0 && !nawal_cid_equal(got, cid)) {
            char ghex[NAWAL_CID_HEX_BYTES];
            nawal_cid_to_hex(ghex, got);
            /* corrupt: remove it so the blob is absent (and can be fetched again), never served */
            unlink(path);
            rc = nawal_fail(err, errlen, "blob %s is corrupt (its content hashes to %s); removed", hex, ghex);
        }
        if (rc == 0 && lseek(fd, 0, SEEK_SET) != 0) rc = nawal_fail(err, errlen, "blob %s: seek failed", hex);
        if (rc) {
            close(fd);
            return -1;
        }
    }
    if (size_out) *size_out = (uint64_t)sb.st_size;
    return fd;
}

/* A ".tmp-<pid>-XXXXXX" name whose writer is gone (or that has no pid). */
static int stale_temp(const char *name) {
    if (strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0) return 0;
    char *end;
    long pid = strtol(name + strlen(TMP_PREFIX), &end, 10);
    if (end == name + strlen(TMP_PREFIX) || *end != '-' || pid <= 0) return 1;
    if (pid == (long)getpid()) return 0; /* ours: maybe another thread's write in progress */
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static int clean_dir(const char *dir, int recurse, size_t *removed, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) return nawal_fail(err, errlen, "%s: cannot read: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0, any = 0;
    char path[4096];
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) continue;
        if (stale_temp(e->d_name)) {
            if (unlink(path) != 0 && errno != ENOENT) rc = nawal_fail(err, errlen, "%s: cannot remove: %s", path, strerror(errno));
            else { any = 1; if (removed) (*removed)++; }
        } else if (recurse && strlen(e->d_name) == 2) {
            struct stat sb;
            if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) rc = clean_dir(path, 0, removed, err, errlen);
        }
    }
    closedir(d);
    if (rc == 0 && any && nawal_fsync_dir(dir)) rc = nawal_fail(err, errlen, "%s: fsync failed", dir);
    return rc;
}

int nawal_blobstore_cleanup(nawal_store *s, size_t *removed, char *err, size_t errlen) {
    char top[4096];
    if (removed) *removed = 0;
    if (blob_dir(s, top, sizeof top)) return nawal_fail(err, errlen, "%s: path too long", nawal_store_dir(s));
    return clean_dir(top, 1, removed, err, errlen);
}
