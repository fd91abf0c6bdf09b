/* fileio.h - durable file writes shared by everything that stores state on
 * disk (safetensors, tokenizers, checkpoints, identities, the coordinator's
 * blob store): write-all loops, directory fsync, and whole-file replacement
 * that is atomic (temporary file in the same directory, fsync, rename,
 * directory fsync), so a reader sees the old file or the new one, never a
 * torn mix, even across a crash. */
#ifndef NAWAL_FILEIO_H
#define NAWAL_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* write() until len bytes are out, retrying EINTR; 0, or -1 with errno set */
int nawal_write_all(int fd, const void *buf, size_t len);

/* fsync a directory (so renames and creations in it are durable); 0 or -1 */
int nawal_fsync_dir(const char *dir);

/* fsync the directory holding path (best effort: some filesystems refuse) */
void nawal_fsync_parent_dir(const char *path);

/* One piece of a file's contents. */
typedef struct {
    const void *data;
    size_t len;
} nawal_chunk;

/* Replaces path with the concatenation of chunks, with the given mode.
 * On failure the previous file, if any, is untouched and no temporary
 * file is left behind. 0, or -1 with a message naming path. */
int nawal_file_replace(const char *path, const nawal_chunk *chunks, size_t n, mode_t mode, char *err, size_t errlen);

/* Removes the temporary files that replacements of path left behind when
 * their process was killed mid-way (path.tmp.XXXXXX beside path). Only for
 * a path that no other thread or process is replacing at the time. Returns
 * how many were removed (best effort: 0 when the directory cannot be read). */
int nawal_file_leftovers_remove(const char *path);

/* Reads the whole file at path into *buf (malloc'ed, *len bytes; a NUL
 * after them, not counted); refused, before anything is allocated, when it
 * is larger than max_len. 0, or -1 with a message naming path. */
int nawal_file_read_all(const char *path, uint64_t max_len, uint8_t **buf, size_t *len, char *err, size_t errlen);

#endif
