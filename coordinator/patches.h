/* patches.h - the compressed downlink, coordinator side: when a round
 * closes with a new model of the same byte length as its base, the model
 * patch base -> new (proto/model_patch.h) is made; when it is smaller than
 * a quarter of the model it goes into the blob store and a row of the
 * model_patches table (to_cid, from_cid, patch_cid, patch_size) records
 * it. RoundAnnounce and EvaluateRequest then name the patch of the model
 * they carry (roundmsg.h, session.c), and the patch blob is served to any
 * authenticated agent like a global model. A patch is an optimisation: a
 * failure to make or record one is logged and never fails a round. */
#ifndef NAWAL_PATCHES_H
#define NAWAL_PATCHES_H

#include "store.h"

typedef struct {
    uint8_t to_cid[32], from_cid[32], patch_cid[32];
    uint64_t patch_size;
} nawal_patch_row;

/* A patch is kept when patch_size * NAWAL_PATCH_KEEP_DIV < model size. */
#define NAWAL_PATCH_KEEP_DIV 4

/* Makes the patch from_cid -> to_cid (both blobs in the store) and, when
 * it is worth keeping, stores its blob: 1 with *out filled; 0: not worth
 * it (lengths differ, or the patch is too large; why in err); -1 on an
 * error (message in err). Reads both models and compresses: call it
 * outside a transaction (the blob needs none), then nawal_patch_record. */
int nawal_patch_make(nawal_store *s, const uint8_t from_cid[32], const uint8_t to_cid[32], nawal_patch_row *out,
                     char *err, size_t errlen);

/* Records a made patch's row (in the caller's transaction when one is open): 0, or -1. */
int nawal_patch_record(nawal_store *s, const nawal_patch_row *r, char *err, size_t errlen);

/* The recorded patch that gives to_cid (the latest recorded, when several)
 * whose blob is in the store: 1 and *out, 0 when none, -1 on an error. */
int nawal_patch_find(nawal_store *s, const uint8_t to_cid[32], nawal_patch_row *out, char *err, size_t errlen);

/* 1 if cid is a recorded patch blob, else 0. */
int nawal_patch_is_blob(nawal_store *s, const uint8_t cid[32]);

#endif
