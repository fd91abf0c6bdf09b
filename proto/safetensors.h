/* safetensors.h -- reading and writing model files in the safetensors format.
 *
 * nawal stores models, checkpoints and test fixtures as safetensors files so
 * that a checkpoint written by nawal loads directly into Hugging Face
 * `transformers` (and the reverse). The format is:
 *
 *   [8 bytes]  N, little-endian u64: length of the JSON header
 *   [N bytes]  JSON object: { "name": {"dtype": "F32", "shape": [..],
 *                                      "data_offsets": [begin, end]}, ...,
 *                             "__metadata__": {"key": "value", ...} }
 *   [rest]     data buffer; offsets are relative to its first byte.
 *
 * Only F32 and I32 tensors are supported (that is all nawal uses); anything
 * else is rejected with an error naming the tensor and its dtype.
 *
 * The reader validates the whole file before returning anything: a file that
 * is truncated, has a malformed header, inconsistent offsets, overlapping
 * tensors or duplicate names produces an error naming the file, never a crash
 * or an allocation larger than the input. Tensor data returned by the reader
 * is always aligned to at least 4 bytes, so `(const float *)t->data` is safe.
 *
 * The writer packs the tensors contiguously in the order given, pads the
 * header with spaces so the data buffer starts 8-byte aligned (as the
 * reference implementation does), and replaces the destination atomically
 * (temporary file in the same directory, fsync, rename).
 *
 * Every function that can fail returns 0 on success and -1 on error, with a
 * human readable message in the caller's `err` buffer (may be NULL). */
#ifndef NAWAL_SAFETENSORS_H
#define NAWAL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { NAWAL_ST_F32 = 0, NAWAL_ST_I32 = 1 } nawal_st_dtype;

#define NAWAL_ST_MAX_DIMS 4
/* Headers larger than this are rejected (the reference limit is 100 MB). */
#define NAWAL_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct {
    const char *name;
    nawal_st_dtype dtype;
    int ndim;                           /* 0 (scalar) .. NAWAL_ST_MAX_DIMS */
    int64_t shape[NAWAL_ST_MAX_DIMS];   /* entries past ndim are 0 */
    size_t nbytes;                      /* element count * element size */
    const void *data;                   /* nbytes bytes; never NULL on read (NULL in an index) */
} nawal_st_tensor;

typedef struct nawal_st_file nawal_st_file;

/* Reads and validates the whole file at `path`. On success *out owns all
 * tensor names, data and metadata until nawal_st_free(). */
int nawal_st_read(nawal_st_file **out, const char *path, char *err, size_t errlen);

/* Same as nawal_st_read for a file already in memory. `label` names the
 * input in error messages (e.g. the path). The result copies what it needs:
 * `buf` may be released as soon as this returns. */
int nawal_st_parse(nawal_st_file **out, const uint8_t *buf, size_t len,
                   const char *label, char *err, size_t errlen);

/* Header only, for reading big files piecewise: reads and validates the
 * length prefix and the JSON header of the file open on fd (every check
 * nawal_st_read makes, offsets against the file's size) without reading
 * any tensor data. The tensors' data pointers are NULL; each tensor's bytes
 * are at nawal_st_data_offset() in the file (read them with pread). fd is
 * not closed or moved. */
int nawal_st_read_index(nawal_st_file **out, int fd, const char *label, char *err, size_t errlen);

/* File offset of tensor i's first byte (8 + header length + its begin
 * offset); 0 if i is out of range. */
uint64_t nawal_st_data_offset(const nawal_st_file *f, size_t i);

void nawal_st_free(nawal_st_file *f);

/* Tensors are listed in the order they appear in the JSON header (for files
 * written by nawal_st_write, the order they were given). */
size_t nawal_st_count(const nawal_st_file *f);
const nawal_st_tensor *nawal_st_at(const nawal_st_file *f, size_t i); /* NULL if i out of range */
const nawal_st_tensor *nawal_st_find(const nawal_st_file *f, const char *name); /* NULL if absent */
const char *nawal_st_metadata(const nawal_st_file *f, const char *key);       /* NULL if absent */
size_t nawal_st_metadata_count(const nawal_st_file *f);
/* i-th metadata entry (header order); returns -1 if i is out of range. */
int nawal_st_metadata_at(const nawal_st_file *f, size_t i, const char **key, const char **value);

/* Size in bytes of one element of `dtype`, 0 for an unknown value. */
size_t nawal_st_dtype_size(nawal_st_dtype dtype);
/* "F32" / "I32", or NULL for an unknown value. */
const char *nawal_st_dtype_name(nawal_st_dtype dtype);

/* Writes `n` tensors (in the given order, data packed contiguously) and the
 * optional metadata `meta_kv` (NULL, or a NULL-terminated list
 * key0, value0, key1, value1, ..., NULL) to `path`, atomically: on failure
 * the previous contents of `path`, if any, are untouched. Each tensor's
 * nbytes must equal its element count times the dtype size; names must be
 * non-empty, unique and not "__metadata__". */
int nawal_st_write(const char *path, const nawal_st_tensor *tensors, size_t n,
                   const char *const *meta_kv, char *err, size_t errlen);

/* The bytes nawal_st_write puts before the tensor data (length prefix and
 * space-padded header, tensors packed in the given order), for writers that
 * stream the data after it: the tensors' data pointers are not used. *out is
 * malloc'ed. */
int nawal_st_encode_header(const nawal_st_tensor *tensors, size_t n, const char *const *meta_kv, uint8_t **out,
                           size_t *len, char *err, size_t errlen);

#endif
