/* aggregate_internal.h - pieces every aggregation strategy shares
 * (aggregate.c's FedAvg, robust.c's median, trimmed mean and Krum): the
 * base model's flat layout, a model-sized buffer, the per-update checks of
 * add, the finiteness scan and serialising base + delta as the new model.
 * Not part of the coordinator's public API. */
#ifndef NAWAL_AGGREGATE_INTERNAL_H
#define NAWAL_AGGREGATE_INTERNAL_H

#include "aggregate.h"

/* Krum (robust.c) holds the pair distances of at most this many windows at
 * once; a model with more windows goes through several batches (the tests
 * size a model past it to cover that path). */
#define NAWAL_KRUM_BATCH 256

/* Checks that every base tensor is F32 and gives each tensor's first float
 * in the flat model (*tensor_off, malloc'ed) and the model's length. */
int nawal_agg_base_layout(const nawal_tensor_source *base, size_t **tensor_off, size_t *total, char *err,
                          size_t errlen);

/* n_floats floats, 2 MiB-aligned (huge pages where allowed); free() it. */
float *nawal_agg_alloc_model(size_t n_floats);

/* add's checks of an update (delta, or frame when not NULL): a weight,
 * base's tensors and shapes (*map: base tensor -> delta tensor, malloc'ed;
 * NULL for a frame), a frame's length. 0, NAWAL_AGG_REJECTED (reason), -1. */
int nawal_agg_check_update(nawal_tensor_source *base, size_t n_floats, const nawal_tensor_source *delta,
                           const nawal_delta_frame *frame, uint64_t weight, size_t **map, char *reason,
                           size_t reasonlen);

/* Index of the first NaN or +-Inf in x[0..n), n if none. */
size_t nawal_agg_first_nonfinite(const float *x, size_t n);

/* Elements [first, first + count) of src's tensor t, viewed in place
 * (*viewed = 1: release them after) unless no_view or the source cannot,
 * else read into buf (*viewed = 0). NULL on a read error (why in e). */
const float *nawal_agg_window(nawal_tensor_source *src, size_t t, size_t first, size_t count, int no_view, float *buf,
                              int *viewed, char *e, size_t elen);

/* The reason an update with x[p] not finite is dropped, for base tensor name at element first + p. */
void nawal_agg_nonfinite_reason(char *out, size_t cap, const char *name, size_t first, size_t p, float v);

/* base + delta (flat, tensor t at tensor_off[t]) as safetensors into sink:
 * base's tensors, order and metadata. NAWAL_AGG_REJECTED if a sum is not
 * finite. */
int nawal_agg_write_model(nawal_tensor_source *base, const float *delta, const size_t *tensor_off,
                          nawal_byte_sink sink, void *ctx, char *err, size_t errlen);

#endif
