/* roundmsg.h - the round messages the coordinator sends, built from its
 * database: RoundAnnounce from a round row and its training config (the
 * round's JSON config mapped onto TrainConfig/DpConfig), RoundResult from a
 * closed round's ledger record (accepted validators and payouts, exactly
 * what was signed into the ledger) or, for a failed round, an empty one.
 * The structs own everything the protobuf-c messages point to. */
#ifndef NAWAL_ROUNDMSG_H
#define NAWAL_ROUNDMSG_H

#include "ledger.h"
#include "patches.h"
#include "nawal.pb-c.h"
#include "store.h"

#include <stddef.h>

typedef struct {
    Nawal__RoundAnnounce msg;
    Nawal__TrainConfig train;
    Nawal__DpConfig dp;
    uint8_t base_cid[32];
    nawal_patch_row patch; /* the base's patch, when one is recorded (patches.h) */
} nawal_announce_msg;

/* RoundAnnounce of round r (its base must be in the blob store: its size is
 * announced), with the base's model patch when one is recorded. Config keys used: steps, lr, batch, topk_ratio and dp
 * {enabled, noise_multiplier, max_grad_norm, sample_rate, target_epsilon,
 * delta}; others are ignored. */
int nawal_announce_build(nawal_store *s, const nawal_round *r, nawal_announce_msg *out, char *err, size_t errlen);

typedef struct {
    Nawal__RoundResult msg;
    ProtobufCBinaryData *accepted;
    Nawal__Payout *payouts;
    Nawal__Payout **payout_ptrs;
    nawal_ledger_record rec;
    int has_rec;
} nawal_result_msg;

/* RoundResult of an ended round r: closed -> its ledger record's model,
 * updates and payouts; failed -> the round id alone. Free with
 * nawal_result_free (also after a failure). */
int nawal_result_build(nawal_store *s, const nawal_round *r, nawal_result_msg *out, char *err, size_t errlen);
void nawal_result_free(nawal_result_msg *m);

/* Sets the patch fields of a RoundAnnounce or EvaluateRequest (the same
 * three, *cid, *from and *size, pointing into row) from the recorded patch
 * of model cid, if any; nothing is set without one or on a database error
 * (the message then goes without: a patch is an optimisation). */
void nawal_patch_fields_set(nawal_store *s, const uint8_t cid[32], nawal_patch_row *row, ProtobufCBinaryData *patch_cid,
                            ProtobufCBinaryData *from_cid, uint64_t *size);

#endif
