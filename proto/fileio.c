/* fileio.c - see fileio.h. */
#include "fileio.h"
#include "error.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* nawal_file_replace's temporary file: path + TMP_SUFFIX, the X's filled in by mkstemp */
#define TMP_MARK ".tmp."
#define TMP_SUFFIX TMP_MARK "XXXXXX"

int nawal_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int nawal_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The directory holding path (malloc'd; NULL when out of memory). */
static char *parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
}

void nawal_fsync_parent_dir(const char *path) {
    char *dir = parent_dir(path);
    if (!dir) return;
    (void)nawal_fsync_dir(dir);
    free(dir);
}

int nawal_file_replace(const char *path, const nawal_chunk *chunks, size_t n, mode_t mode, char *err, size_t errlen) {
    size_t plen = strlen(path);
    static const char suffix[] = TMP_SUFFIX;
    char *tmp = malloc(plen + sizeof suffix);
    if (!tmp) return nawal_fail(err, errlen, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return nawal_fail(err, errlen, "%s: cannot create a temporary file beside it: %s", path, strerror(e));
    }
    const char *what = "chmod";
    int ok = fchmod(fd, mode) == 0;
    for (size_t i = 0; ok && i < n; i++)
        if (chunks[i].len && nawal_write_all(fd, chunks[i].data, chunks[i].len) != 0) { ok = 0; what = "write"; }
    if (ok && fsync(fd) != 0) { ok = 0; what = "fsync"; }
    int e = errno;
    if (close(fd) != 0 && ok) { ok = 0; what = "close"; e = errno; }
    if (ok && rename(tmp, path) != 0) { ok = 0; what = "rename"; e = errno; }
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return nawal_fail(err, errlen, "%s: %s failed: %s", path, what, strerror(e));
    }
    free(tmp);
    nawal_fsync_parent_dir(path);
    return 0;
}

int nawal_file_leftovers_remove(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char *dir = parent_dir(path);
    DIR *d = dir ? opendir(dir) : NULL;
    free(dir);
    if (!d) return 0;
    size_t blen = strlen(base), mark = sizeof TMP_MARK - 1, xs = sizeof TMP_SUFFIX - sizeof TMP_MARK;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (n == blen + mark + xs && !memcmp(e->d_name, base, blen) && !memcmp(e->d_name + blen, TMP_MARK, mark) &&
            unlinkat(dirfd(d), e->d_name, 0) == 0)
            removed++;
    }
    closedir(d);
    return removed;
}

int nawal_file_read_all(const char *path, uint64_t max_len, uint8_t **buf, size_t *len, char *err, size_t errlen) {
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "%s: %s", path, strerror(errno));
    struct stat sb;
    int bad = fstat(fd, &sb) != 0 ? errno : !S_ISREG(sb.st_mode) ? -1 : 0;
    if (bad) {
        close(fd);
        return nawal_fail(err, errlen, "%s: %s", path, bad > 0 ? strerror(bad) : "not a regular file");
    }
    if ((uint64_t)sb.st_size > max_len || (uint64_t)sb.st_size >= SIZE_MAX) {
        close(fd);
        return nawal_fail(err, errlen, "%s: %lld bytes, more than the %llu allowed", path, (long long)sb.st_size,
                          (unsigned long long)max_len);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    uint8_t *p = malloc(n + 1);
    if (!p) {
        close(fd);
        return nawal_fail(err, errlen, "%s: out of memory for %zu bytes", path, n);
    }
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(p);
            close(fd);
            return nawal_fail(err, errlen, "%s: %s", path, e ? strerror(e) : "the file shrank while being read");
        }
        got += (size_t)r;
    }
    close(fd);
    p[n] = 0;
    *buf = p;
    *len = n;
    return 0;
}
