/* model_patch.h - model patches: the compressed downlink. A patch turns one
 * model file into another of the same byte length by listing the 4-byte
 * words that differ (file offsets 0, 4, 8, ...; a final partial word is
 * compared and written as its bytes). With top-k deltas a round changes at
 * most N x k entries, so an agent holding the previous global model
 * downloads the patch (a blob like any other, by CID) instead of the whole
 * new model (coordinator/patches.h makes and announces them).
 *
 * Frame (little-endian), 88-byte header then one zstd frame:
 *    0  magic "NWMP"          8  file length (u64): of both models
 *    4  version (u8) = 1     16  from CID (32 bytes): BLAKE2b-256 of the old model
 *    5  0, 0, 0 (reserved)   48  to CID (32 bytes): of the new model
 *                            80  k (u64): words changed, <= ceil(length / 4)
 *                            88  zstd frame (with its content size) to the end
 * The payload the zstd frame holds:
 *    k word indices, strictly increasing, as unsigned LEB128 varints in
 *      canonical form: the first index, then each minus the one before (>= 1)
 *    k new words as 4 byte planes (every word's byte 0, then every byte 1,
 *      ...); the bytes of a final partial word past the end of the file are 0.
 *
 * A frame is accepted only if everything holds: magic, version, reserved
 * bytes 0, length <= NAWAL_PATCH_MAX_LEN, k <= words; the zstd frame single,
 * without trailing bytes and declaring a payload size within the exact
 * bounds k and the number of words imply (checked before anything is
 * allocated); every index canonical, in range and strictly increasing; no
 * byte left over. Applying also needs the from model's length and CID equal
 * to the header's, and the result's CID equal to the to CID. Anything else
 * is -1 with a message, and the output untouched.
 *
 * Memory: applying holds the from model (read whole) and the decompressed
 * payload (k x at most ~5 bytes + 4k bytes, so at most ~1.3 x the model even
 * for a patch of every word); making holds both models and the payload.
 *
 * Every function returns 0 on success and -1 on error with a message in
 * err (which may be NULL). */
#ifndef NAWAL_MODEL_PATCH_H
#define NAWAL_MODEL_PATCH_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_PATCH_VERSION 1
#define NAWAL_PATCH_HEADER_BYTES 88
#define NAWAL_PATCH_MAX_LEN ((uint64_t)UINT32_MAX * 4) /* word indices are u32 */

/* What a patch's header says (read and checked without decompressing). */
typedef struct {
    uint64_t file_len;  /* bytes of both models */
    uint64_t words;     /* ceil(file_len / 4) */
    uint64_t k;         /* words changed */
    uint8_t from_cid[32], to_cid[32];
} nawal_patch_info;

/* A new frame (*frame malloc'ed, *frame_len bytes) turning from into to,
 * which must have the same length (<= NAWAL_PATCH_MAX_LEN); zstd_level 0:
 * zstd's default. from_cid / to_cid: the models' CIDs when the caller
 * knows them (a blob store's names), else NULL and they are computed here;
 * an agent checks both when it applies the patch. */
int nawal_model_patch_make(const uint8_t *from, size_t from_len, const uint8_t *from_cid, const uint8_t *to,
                           size_t to_len, const uint8_t *to_cid, int zstd_level, uint8_t **frame, size_t *frame_len,
                           char *err, size_t errlen);
/* The same from two files (read whole). */
int nawal_model_patch_make_files(const char *from_path, const uint8_t *from_cid, const char *to_path,
                                 const uint8_t *to_cid, int zstd_level, uint8_t **frame, size_t *frame_len, char *err,
                                 size_t errlen);

/* 1 if buf starts with a patch's magic "NWMP", else 0. */
int nawal_model_patch_is_frame(const uint8_t *buf, size_t len);

/* Reads and checks a frame's header (no decompression). */
int nawal_model_patch_info_read(nawal_patch_info *info, const uint8_t *frame, size_t len, char *err, size_t errlen);

/* *out (malloc'ed, *out_len bytes) = from patched; *out is set only on success. */
int nawal_model_patch_apply(const uint8_t *from, size_t from_len, const uint8_t *frame, size_t frame_len, uint8_t **out,
                            size_t *out_len, char *err, size_t errlen);
/* Reads the model at from_path, patches it and writes the result to
 * out_path atomically (fileio.h's nawal_file_replace, mode 0644); out_path
 * is not touched on any failure (it may be from_path). */
int nawal_model_patch_apply_file(const char *from_path, const uint8_t *frame, size_t frame_len, const char *out_path,
                                 char *err, size_t errlen);

#endif
