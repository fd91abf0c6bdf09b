/* aggregate.h - turning a round's accepted updates into the next global
 * model: the aggregation strategy interface, weighted FedAvg, the
 * Byzantine-robust rules (median, trimmed mean, Krum) and the round-level
 * driver (quality filter, per-update validation, output blob).
 *
 * Updates are model deltas (delta = local - base) of two kinds, told apart
 * by their first bytes (nawal_update_open_*). Dense safetensors deltas are
 * read range by range through nawal_tensor_source, so no strategy ever
 * holds a whole delta: the source serves the pieces it is asked for from a
 * read-only file mapping (or pread). Codec frames (proto/delta_codec.h,
 * over the base's flat vector, proto/flat_model.h) go to a strategy's
 * optional add_frame instead: a frame cannot be read range by range (its
 * indices are varint gaps, its payload one zstd frame), so a strategy that
 * takes frames decodes each whole frame once, straight into its own state,
 * one frame at a time. A strategy without add_frame refuses frames (the
 * driver says why); the robust rules, which need every update side by
 * side, decode each frame into a spill file.
 *
 * Strategy interface (nawal_aggregator): begin(base model); add(delta,
 * weight) once per update, which checks what it can at once (the delta has
 * exactly the base's tensors, F32, same shapes, nothing extra; a weight);
 * finish(), which reads the updates and decides: an update with a value
 * that is not finite (or, in later robust rules, an outlier) is dropped
 * there and leaves no trace in the result; verdict(i) then says which
 * updates were used and why the others were not; write(sink) serialises
 * the new model. A coordinate-wise median or Krum fits the same calls (keep
 * the sources from add, read them side by side in finish: robust.c).
 *
 * FedAvg: new = base + sum_i w_i delta_i / sum_i w_i over the updates used,
 * w_i = the update's number of examples (u64). The weights are normalised
 * in double (c_i = w_i / sum w, rounded to float once); the values are
 * combined in fp32 by one pass over the model in windows of 256 Ki floats
 * spread over the threads: for each window, every update in turn is viewed
 * in place in its file mapping (or read into a per-thread buffer when the
 * source cannot be viewed), checked and added into the accumulator's
 * window, which stays in cache, then released:
 *     mean[e] = c_1 d_1[e] + c_2 d_2[e] + ... (left to right, fp32).
 * Codec frames are added before that pass, into the zeroed accumulator,
 * in update order, each with nawal_delta_accumulate (which checks the
 * whole frame, NaN/Inf and indices included, before its first write, and
 * then touches only the entries the frame sends): acc[e] = c_f1 v_f1[e] +
 * ... then the dense pass adds c_d1 d_1[e] + ... on top. A frame is read
 * once (mapped, its pages released after), decoded single-threaded, and
 * costs, on top of the accumulator, only its decompressed payload while it
 * is being added (k x (value bytes + ~2 index bytes), up to 4n bytes for a
 * dense f32 frame), whatever the number of updates. With no frame the
 * arithmetic is exactly the dense-only one.
 * The finiteness check is fused into that pass; an update caught with a
 * NaN/Inf is dropped and the pass starts over without it, so the result is
 * exactly what the other updates alone give (the cost, at most one wasted
 * pass per bad update, falls only on rounds with bad updates; a bad frame
 * is caught before the dense pass, so it wastes only the frames before it). Each delta
 * byte is read once: throughput is bounded by reading the deltas, not by
 * the accumulator. Memory: one fp32 accumulator the size of the model and,
 * per thread, one window mapped at a time (the kernel maps file pages in
 * pieces of up to 2 MiB, so up to 4 MiB) and one window buffer, whatever
 * the number of updates (each open update also costs a file descriptor and
 * its header's index, a few KiB).
 * Every partial sum is a convex combination of delta values, so nothing
 * overflows that the inputs do not; the result differs from the exact
 * weighted mean by at most
 *     (K + 3) u (max_i |delta_i| + |base|)   per element,
 * u = 2^-24, K updates used (K - 1 sums, K products, K coefficient
 * roundings, each at most u times that magnitude, plus the final add). It
 * is deterministic: it depends on the updates and their order, not on the
 * thread count or chunking (each element's arithmetic is the same).
 *
 * fedavg-sparse (option per_entry): the same, except that each entry is
 * the weighted mean over the updates that send it: a top-k frame speaks
 * for the entries it sends only, so
 *     new[e] = base[e] + sum_{i sends e} w_i d_i[e] / sum_{i sends e} w_i
 * (dense updates send every entry; an entry nobody sends stays at base).
 * With dense updates only it is FedAvg. With top-k frames it does not
 * shrink an entry one validator sent by the share of those that did not
 * (plain FedAvg moves an entry sent by one of N equal validators by 1/N
 * of its value, though that validator's error feedback counts it as
 * delivered): on long runs of short rounds it gets a 1% top-k federation
 * much closer to the dense run (bench/RESULTS.md). It costs a second
 * model-sized fp32 buffer (the frames' weight on each entry).
 *
 * Mapped reads: a delta file that shrinks while mapped, or a disk read
 * error on a mapped page, raises SIGBUS instead of an error return. Blobs
 * are never truncated in place (written aside and renamed), and the deltas
 * of a round have just arrived (page cache); fedavg's no_view option (pread
 * only, ~10-20% slower here, bench/RESULTS.md) trades that for errors.
 *
 * Return values: 0 ok; -1 an error that is not the update's fault (I/O,
 * memory: the caller may retry the whole aggregation); NAWAL_AGG_REJECTED
 * for an update (or an aggregate) refused on its merits, with the reason. */
#ifndef NAWAL_AGGREGATE_H
#define NAWAL_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#include "delta_codec.h"
#include "safetensors.h"
#include "store.h"

enum { NAWAL_AGG_OK = 0, NAWAL_AGG_ERROR = -1, NAWAL_AGG_REJECTED = 1 };

#define NAWAL_AGG_DEFAULT_CHUNK 262144 /* floats per window of FedAvg's pass (1 MiB, stays in cache) */
#define NAWAL_AGG_REASON_BYTES 256

/* ---- tensor sources ---------------------------------------------------- */

typedef struct {
    const char *name;
    nawal_st_dtype dtype;
    int ndim;
    int64_t shape[NAWAL_ST_MAX_DIMS];
    size_t numel;
} nawal_tensor_info;

typedef struct nawal_tensor_source nawal_tensor_source;
struct nawal_tensor_source {
    const char *label;                /* for messages: a path or "delta <cid>" */
    size_t n_tensors;
    const nawal_tensor_info *tensors; /* in flat order: by data offset in the file (proto/flat_model.h) */
    const char *const *meta_kv;       /* NULL-terminated key, value, ... list (may be NULL) */
    /* Elements [first, first + count) of tensor i, as fp32, into dst.
     * Called concurrently from several threads for disjoint ranges. */
    int (*read)(nawal_tensor_source *src, size_t i, size_t first, size_t count, float *dst, char *err,
                size_t errlen);
    /* Optional (NULL, or returning NULL, means use read): the same range
     * in place, read-only, valid until release or close, for sources that
     * hold their data in memory (the dense source: a file mapping), which
     * saves a copy per byte. release says a viewed range is done with, so
     * its pages leave the process's resident set. Both thread-safe. */
    const float *(*view)(nawal_tensor_source *src, size_t i, size_t first, size_t count);
    void (*release)(nawal_tensor_source *src, size_t i, size_t first, size_t count);
    void (*close)(nawal_tensor_source *src);
};

/* Dense safetensors (F32 little-endian; the header is read and checked,
 * the data is read on demand: mapped read-only, viewed in place and
 * released range by range, or read with pread where it cannot be mapped).
 * The file must not shrink while open (blobs never change; a truncated
 * mapping would fault). open_fd takes ownership of fd, also on failure.
 * Returns 0, -1 (I/O), or NAWAL_AGG_REJECTED when the file is not valid
 * safetensors (reason in err). */
int nawal_tensor_source_open_fd(nawal_tensor_source **out, int fd, const char *label, char *err, size_t errlen);
int nawal_tensor_source_open_file(nawal_tensor_source **out, const char *path, char *err, size_t errlen);
/* A blob of the store, not re-hashed (blobs are verified when they arrive
 * and are immutable): a missing blob is -1. */
int nawal_tensor_source_open_blob(nawal_tensor_source **out, nawal_store *s, const uint8_t cid[32], char *err,
                                  size_t errlen);
void nawal_tensor_source_close(nawal_tensor_source *src); /* NULL is fine */

/* ---- compressed deltas ------------------------------------------------------ */

/* A codec frame (proto/delta_codec.h) held in a read-only mapping of its
 * file (the same caveat as the dense source: the file must not shrink);
 * only its header has been checked (info). */
typedef struct {
    const char *label;
    const uint8_t *bytes; /* the whole frame */
    size_t len;
    nawal_delta_info info;
} nawal_delta_frame;

/* An update file of either kind, told apart by its first bytes
 * (nawal_delta_is_frame): on 0, exactly one of *src (dense safetensors) and
 * *frame is set. Takes ownership of fd, also on failure. Returns 0, -1
 * (I/O), or NAWAL_AGG_REJECTED (not valid safetensors, or a frame whose
 * header is bad; reason in err). _blob: as nawal_tensor_source_open_blob. */
int nawal_update_open_fd(nawal_tensor_source **src, nawal_delta_frame **frame, int fd, const char *label, char *err,
                         size_t errlen);
int nawal_update_open_file(nawal_tensor_source **src, nawal_delta_frame **frame, const char *path, char *err,
                           size_t errlen);
int nawal_update_open_blob(nawal_tensor_source **src, nawal_delta_frame **frame, nawal_store *s,
                           const uint8_t cid[32], char *err, size_t errlen);
void nawal_delta_frame_close(nawal_delta_frame *fr); /* NULL is fine */

/* Checks that delta has exactly base's tensors (by name; any order), each
 * F32 with base's shape. map_out (may be NULL; base->n_tensors entries)
 * gets, for each base tensor, its index in delta. 0 or NAWAL_AGG_REJECTED
 * with the first difference in reason. */
int nawal_tensor_layout_match(const nawal_tensor_source *base, const nawal_tensor_source *delta, size_t *map_out,
                              char *reason, size_t reasonlen);

/* ---- strategies ------------------------------------------------------------ */

/* Where finish writes the new model's safetensors bytes, in order. */
typedef int (*nawal_byte_sink)(void *ctx, const void *buf, size_t len, char *err, size_t errlen);

typedef struct nawal_aggregator nawal_aggregator;
struct nawal_aggregator {
    const char *name;
    /* base is borrowed until write (or destroy) returns; its tensors must be F32. */
    int (*begin)(nawal_aggregator *a, nawal_tensor_source *base, char *err, size_t errlen);
    /* Offers update number i (0, 1, ... in call order), taking ownership of
     * delta (the aggregator closes it). NAWAL_AGG_REJECTED (reason) when it
     * is refused at once; 0 when taken (finish may still drop it); -1 on an
     * error (the update is not counted). */
    int (*add)(nawal_aggregator *a, nawal_tensor_source *delta, uint64_t weight, char *reason, size_t reasonlen);
    /* Optional (NULL: the strategy takes no compressed deltas): add for an
     * update sent as a codec frame, taking ownership of frame; numbered
     * with add's updates, same returns. FedAvg refuses at once a frame
     * whose n is not the base's flat length; finish drops a frame whose
     * payload is bad (truncated, NaN/Inf, indices), with the codec's reason. */
    int (*add_frame)(nawal_aggregator *a, nawal_delta_frame *frame, uint64_t weight, char *reason, size_t reasonlen);
    /* Reads the updates and computes the new model. NAWAL_AGG_REJECTED when
     * no update is usable. */
    int (*finish)(nawal_aggregator *a, char *err, size_t errlen);
    /* After finish: 0 if update i was used, NAWAL_AGG_REJECTED with the reason if not. */
    int (*verdict)(nawal_aggregator *a, size_t i, char *reason, size_t reasonlen);
    /* The new model (base's tensors in base's order, base's metadata) as
     * safetensors bytes, in order, into sink. NAWAL_AGG_REJECTED if it is
     * not finite (float overflow). */
    int (*write)(nawal_aggregator *a, nawal_byte_sink sink, void *ctx, char *err, size_t errlen);
    void (*destroy)(nawal_aggregator *a);
};

typedef struct {
    int threads;  /* <= 0: OpenMP's default */
    size_t chunk; /* floats per window (0: NAWAL_AGG_DEFAULT_CHUNK) */
    int no_view;  /* always read (copy), never view: for tests and comparisons */
    int per_entry; /* "fedavg-sparse": see above */
} nawal_fedavg_options;

int nawal_fedavg_create(nawal_aggregator **out, const nawal_fedavg_options *o, char *err, size_t errlen);

/* Byzantine-robust rules (robust.c). They ignore the updates' weights (an
 * update's own claim of its number of examples must not decide its
 * influence) and read every update side by side, window by window (codec
 * frames are first decoded into unlinked spill files: a frame's unsent
 * entries count as 0, as in FedAvg). Per element e of the flat model, over
 * the n updates used:
 *   median:        the middle value (n odd), the mean of the two middle
 *                  values (n even, in double, rounded once);
 *   trimmed-mean:  sort the n values, drop b = ceil(trim x n - 1e-9) at
 *                  each end (the 1e-9 absorbs the rounding of a fraction
 *                  like 0.2 x 5; fewer when n - 2b would be < 1), mean of
 *                  the rest in double, rounded once; trim 0 is the plain
 *                  mean;
 *   krum:          (multi-)Krum, Blanchard et al. 2017: score_i = sum of
 *                  the squared distances from update i to its n - f - 2
 *                  nearest others; the m lowest scores (ties: the earlier
 *                  update) are averaged (unweighted), the others dropped
 *                  with their score and rank as the reason. f defaults to
 *                  the most n tolerates, floor((n - 3) / 2); m to n - f
 *                  (1 when f >= n; m = 1 is classic Krum). With fewer
 *                  than f + 3 updates the scores use n - 3 as f (one
 *                  neighbour each); with fewer than 3 every update scores
 *                  0. Distances in double (no overflow). Krum drops n - m
 *                  updates every round, attack or not: a round's minimum
 *                  of accepted updates must be at most m.
 * The median and the trimmed mean drop no finite update (each value that
 * falls outside the kept middle is ignored for that element only), so
 * every finite update is "used" and paid; Krum's dropped updates are not.
 * An update with a non-finite value is dropped and the rule recomputed
 * without it. The median and trimmed mean of finite floats are finite;
 * deterministic for a given update order, whatever the thread count. */
typedef enum { NAWAL_ROBUST_MEDIAN, NAWAL_ROBUST_TRIMMED_MEAN, NAWAL_ROBUST_KRUM } nawal_robust_rule;

typedef struct {
    nawal_robust_rule rule;
    double trim;           /* trimmed-mean: fraction dropped at each end, in [0, 0.5) */
    int krum_f;            /* krum: updates assumed Byzantine (< 0: floor((n - 3) / 2)) */
    int krum_m;            /* krum: updates averaged (<= 0: n - f) */
    int threads;           /* <= 0: OpenMP's default */
    const char *spill_dir; /* decoded frames go here (NULL: $TMPDIR, else /tmp); copied */
} nawal_robust_options;

int nawal_robust_create(nawal_aggregator **out, const nawal_robust_options *o, char *err, size_t errlen);

/* Krum (o's krum_f, krum_m) over n updates: how many it averages, m (n - m
 * are dropped every round); *f_out (may be NULL) gets the f it assumes. */
size_t nawal_krum_kept(const nawal_robust_options *o, size_t n, long *f_out);

/* "median", "trimmed-mean[:TRIM]" (default 0.2), "krum[:F[:M]]" into *o
 * (threads and spill_dir zeroed): 1 parsed; 0 not a robust rule's name; -1
 * a robust rule with a bad parameter (err says why). */
int nawal_robust_parse(const char *strategy, nawal_robust_options *o, char *err, size_t errlen);

/* By name: "fedavg" (NULL), "fedavg-sparse", or a robust rule as
 * nawal_robust_parse reads it; spill_dir as in nawal_robust_options. */
int nawal_aggregator_create(nawal_aggregator **out, const char *strategy, int threads, const char *spill_dir,
                            char *err, size_t errlen);
void nawal_aggregator_destroy(nawal_aggregator *a); /* NULL is fine */
/* 0 when strategy names an aggregator, else -1 with the known names in err. */
int nawal_aggregator_known(const char *strategy, char *err, size_t errlen);

/* ---- a round's aggregation ------------------------------------------------ */

typedef struct {
    const char *strategy; /* NULL: "fedavg" */
    int threads;          /* <= 0: OpenMP's default */
} nawal_agg_config;

typedef struct {
    uint8_t validator[32];
    int accepted;
    char reason[NAWAL_AGG_REASON_BYTES]; /* why it was dropped ("" when accepted) */
} nawal_agg_verdict;

typedef struct {
    int has_model;          /* 0: fewer than min_accepted usable updates (note says why) */
    uint8_t model_cid[32];
    uint64_t model_size;
    size_t n_updates, n_accepted;
    uint64_t total_examples; /* of the accepted updates */
    nawal_agg_verdict *verdicts; /* n_updates, in nawal_store_submissions order (validator key) */
    int64_t duration_ms;
    char note[NAWAL_AGG_REASON_BYTES];
} nawal_agg_result;

/* Aggregates round_id's submissions onto its base: updates whose reported
 * quality is below the round's min_quality_ppm are dropped first, the rest
 * are validated and combined by cfg's strategy (in validator-key order);
 * when at least min_accepted (>= 1) survive, the new model goes into the
 * blob store. Raises the open-file limit to fit one descriptor per update. Changes nothing
 * in the database: the caller records the verdicts (rounds.c does, with
 * the settlement, in one transaction). Free res with nawal_agg_result_free. */
int nawal_round_aggregate(nawal_store *s, int64_t round_id, const nawal_agg_config *cfg, size_t min_accepted,
                          nawal_agg_result *res, char *err, size_t errlen);
void nawal_agg_result_free(nawal_agg_result *res);

#endif
