/* delta_codec.h - the compressed model delta an agent uploads each round.
 *
 * An agent's update is delta = local - base over the whole flat model
 * (n floats). nawal_delta_encode turns it into a self-describing frame:
 * top-k sparsification by magnitude with error feedback (the part not
 * sent is kept in the caller's residual and added to the next round's
 * delta), values quantised (fp16, or int8 with one fp32 scale per block),
 * indices as varint gaps, the payload zstd-compressed. The coordinator
 * checks and reads a frame with nawal_delta_decode (into a dense buffer) or
 * nawal_delta_accumulate (adds weight x values into its FedAvg accumulator,
 * touching only the entries sent: no dense copy per client).
 *
 * Frame (little-endian), 32-byte header then one zstd frame:
 *    0  magic "NWDC"          8  n (u64): model length
 *    4  version (u8) = 1     16  k (u64): entries sent
 *    5  mode (u8)            24  ratio (f32)
 *    6  values (u8)          28  block (u32): int8 block size, else 0
 *    7  0 (u8, reserved)     32  zstd frame (with its content size) to the end
 *  mode NAWAL_DELTA_DENSE: k = n, ratio = 1, no indices;
 *  mode NAWAL_DELTA_TOPK:  k = ceil(ratio n) (nawal_delta_topk_count), ratio < 1.
 * The payload the zstd frame holds:
 *    int8 only: ceil(k / block) scales, f32
 *    k values: f32 or f16 as byte planes (every value's byte 0, then every
 *              byte 1, ...: the low-entropy exponent bytes sit together for
 *              zstd), or int8 in [-127, 127]
 *    top-k only: k indices, strictly increasing, as unsigned LEB128 varints
 *              in canonical (shortest) form: the first index, then each
 *              index minus the one before (>= 1)
 * Value j of the frame is the f32 or f16 value itself, or q_j x scale of
 * its block (block = j / block size), computed in float. There is no
 * checksum: the blob's content ID covers integrity.
 *
 * A frame is accepted only if everything above holds: header fields known
 * and consistent, n equal to the model's length, k <= n, the zstd frame
 * single, well formed and declaring a payload size within the exact bounds
 * implied by n, k and the value encoding (checked before anything is
 * allocated), every index in range and strictly increasing, every value
 * and scale finite (scales in [0, FLT_MAX / 127], so values stay finite).
 * Anything else is -1 with a message, and the caller's output untouched:
 * the whole frame is validated before the first write.
 *
 * Every function returns 0 on success and -1 on error with a message in
 * err (which may be NULL). */
#ifndef NAWAL_DELTA_CODEC_H
#define NAWAL_DELTA_CODEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct nawal_ops nawal_ops; /* kernels/ops.h */

#define NAWAL_DELTA_VERSION 1
#define NAWAL_DELTA_HEADER_BYTES 32
#define NAWAL_DELTA_DEFAULT_RATIO 0.01f
#define NAWAL_DELTA_DEFAULT_BLOCK 256
#define NAWAL_DELTA_MAX_BLOCK 65536
#define NAWAL_DELTA_MAX_N ((uint64_t)UINT32_MAX) /* indices are u32 */

typedef enum { NAWAL_DELTA_DENSE = 0, NAWAL_DELTA_TOPK = 1 } nawal_delta_mode;
typedef enum { NAWAL_DELTA_F32 = 0, NAWAL_DELTA_F16 = 1, NAWAL_DELTA_I8 = 2 } nawal_delta_values;

typedef struct {
    float ratio;               /* fraction of entries sent, in (0, 1]; 1 = dense */
    nawal_delta_values values; /* value encoding */
    uint32_t block;            /* int8: values per scale, 1..NAWAL_DELTA_MAX_BLOCK (0: the default) */
    int zstd_level;            /* 0: zstd's default (3) */
} nawal_delta_params;

/* ratio 0.01, fp16 values, int8 blocks of 256, zstd level 3 */
void nawal_delta_params_default(nawal_delta_params *p);

/* k = ceil(ratio x n) for a top-k frame (computed in double); n for ratio 1. */
uint64_t nawal_delta_topk_count(uint64_t n, float ratio);

/* What a frame's header says (read and checked without decompressing). */
typedef struct {
    nawal_delta_mode mode;
    nawal_delta_values values;
    uint64_t n, k;
    float ratio;
    uint32_t block;
} nawal_delta_info;

/* Encodes delta[0..n) (host memory) into a new frame (*frame malloc'ed,
 * *frame_len bytes).
 *
 * Error feedback: residual (host memory, n floats, or NULL for none) is
 * added first: x = delta + residual (fp32, one rounding). The k =
 * ceil(ratio n) entries of largest |x| are selected with o's topk_select
 * (ops.h): the CPU backend selects in place; any other backend (o->name not
 * "cpu") gets x staged in its device buffers. Ratio 1 keeps every entry.
 * They are quantised, and on return residual = x - sent, where sent is
 * exactly what a decoder of the frame gets (0 off the selected set, so the
 * quantisation error is fed back too). The quantisers keep sent within a
 * factor 2 of x (an int8 value under half its step is sent as 0), so
 * x - sent is exact and sent + residual == x element-wise; fp16 saturates
 * at +-65504 (the rest stays in the residual; exact up to |x| = 131008).
 *
 * Refused: a delta or residual value that is not finite, or max |delta| +
 * max |residual| above 1e38 (x must stay finite with room for int8 steps).
 * On error no frame is returned and residual is unchanged, except after a
 * failure inside zstd (memory), the only one possible once the residual has
 * been updated: then nothing was sent and residual = x. */
int nawal_delta_encode(const nawal_ops *o, const nawal_delta_params *p, const float *delta, float *residual,
                       size_t n, uint8_t **frame, size_t *frame_len, char *err, size_t errlen);

/* 1 if buf starts with a frame's magic "NWDC" (tells a frame from a
 * safetensors file, whose first 8 bytes are its header length: read as
 * little-endian, "NWDC" would be a header of over 1 GB, more than
 * safetensors.h accepts), else 0. Nothing else is checked. */
int nawal_delta_is_frame(const uint8_t *buf, size_t len);

/* Reads and checks a frame's header (no decompression); n is not checked. */
int nawal_delta_info_read(nawal_delta_info *info, const uint8_t *frame, size_t len, char *err, size_t errlen);

/* out[0..n) = the frame's values (0 where nothing was sent); n must be the
 * frame's n. out is written only once the whole frame has been checked. */
int nawal_delta_decode(float *out, size_t n, const uint8_t *frame, size_t len, char *err, size_t errlen);

/* acc[i] += weight * value_i for each entry the frame sends (weight finite):
 * the same float operations as decoding into a dense buffer and then
 * acc[i] += weight * dense[i] over the sent entries. With wsum (n floats,
 * or NULL) also wsum[i] += weight for each entry sent (every entry of a
 * dense frame): the per-entry weight a sparse-aware mean divides by. acc
 * and wsum are written only once the whole frame has been checked. */
int nawal_delta_accumulate(float *acc, float *wsum, size_t n, float weight, const uint8_t *frame, size_t len,
                           char *err, size_t errlen);

#endif
