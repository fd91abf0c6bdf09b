/* fuzz_util.h - helpers shared by the libFuzzer targets in this folder.
 *
 * The parsers under test read files by path, so each run writes the fuzz
 * input to a file first:
 *   fuzz_memfile()   an anonymous in-memory file (memfd_create), named by its
 *                    /proc/self/fd/N path: no disk, nothing left behind;
 *   fuzz_tmpfile()   a file with a given name (the corpus loader needs a
 *                    ".jsonl" suffix, the checkpoint reader "config.json")
 *                    in a private directory made once per process on
 *                    /dev/shm when writable (else $TMPDIR or /tmp) and
 *                    removed at exit.
 * A failure here is a broken harness, not a finding: it prints why and
 * aborts so that the run cannot silently test nothing. */
#ifndef NAWAL_FUZZ_UTIL_H
#define NAWAL_FUZZ_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FUZZ_CHECK(cond, what)                                                          \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, what, \
                    #cond);                                                             \
            abort();                                                                    \
        }                                                                               \
    } while (0)

static inline void fuzz_die(const char *what) {
    fprintf(stderr, "fuzz harness: %s: %s\n", what, strerror(errno));
    abort();
}

static char fuzz_dir_path[512];
static char fuzz_file_path[640];

static inline void fuzz_cleanup(void) {
    if (fuzz_file_path[0]) unlink(fuzz_file_path);
    if (fuzz_dir_path[0]) rmdir(fuzz_dir_path);
}

/* Writes data to fd from offset 0 and cuts the file there. */
static inline void fuzz_fill_fd(int fd, const uint8_t *data, size_t size) {
    if (ftruncate(fd, 0) != 0) fuzz_die("ftruncate");
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fuzz_die("write");
        off += (size_t)w;
    }
}

/* Path of a file holding exactly data[0..size), in a private directory;
 * `name` is its base name and must be the same on every call. */
static inline const char *fuzz_tmpfile(const char *name, const uint8_t *data, size_t size) {
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        if (!base || !base[0]) base = "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/nawal-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) {
            fuzz_dir_path[0] = 0;
            fuzz_die("mkdtemp");
        }
        snprintf(fuzz_file_path, sizeof fuzz_file_path, "%s/%s", fuzz_dir_path, name);
        atexit(fuzz_cleanup);
    }
    int fd = open(fuzz_file_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) fuzz_die(fuzz_file_path);
    fuzz_fill_fd(fd, data, size);
    if (close(fd) != 0) fuzz_die("close");
    return fuzz_file_path;
}

/* Path of the directory fuzz_tmpfile() writes into (after its first call). */
static inline const char *fuzz_tmpdir(void) { return fuzz_dir_path; }

/* Path of an in-memory file holding exactly data[0..size); falls back to
 * fuzz_tmpfile(fallback_name) where memfd_create or /proc is missing. */
static inline const char *fuzz_memfile(const char *fallback_name, const uint8_t *data, size_t size) {
    static int fd = -2;
    static char path[64];
    if (fd == -2) {
        fd = memfd_create("nawal-fuzz", MFD_CLOEXEC);
        if (fd >= 0) {
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            if (access(path, R_OK) != 0) {
                close(fd);
                fd = -1;
            }
        }
    }
    if (fd < 0) return fuzz_tmpfile(fallback_name, data, size);
    fuzz_fill_fd(fd, data, size);
    return path;
}

#endif
