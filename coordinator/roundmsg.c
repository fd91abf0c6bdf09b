/* roundmsg.c - RoundAnnounce / RoundResult from the database (see roundmsg.h). */
#include "roundmsg.h"

#include "error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static double num(json_t *o, const char *key, double dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static uint32_t count(json_t *o, const char *key) {
    double v = num(o, key, 0);
    return v >= 0 && v <= 4294967295.0 ? (uint32_t)v : 0;
}

int nawal_announce_build(nawal_store *s, const nawal_round *r, nawal_announce_msg *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    char path[4096], *cfg = NULL;
    struct stat sb;
    if (nawal_blobstore_path(s, r->base_cid, path, sizeof path) || stat(path, &sb) != 0)
        return nawal_fail(err, errlen, "round %lld: base model blob missing from the store", (long long)r->id);
    if (nawal_store_round_config(s, r->id, &cfg, err, errlen)) return -1;
    json_t *j = json_loads(cfg, 0, NULL);
    free(cfg);
    if (!json_is_object(j)) {
        json_decref(j);
        return nawal_fail(err, errlen, "round %lld: training config is not a JSON object", (long long)r->id);
    }
    nawal__train_config__init(&out->train);
    nawal__dp_config__init(&out->dp);
    out->train.steps = count(j, "steps");
    out->train.lr = (float)num(j, "lr", 0);
    out->train.batch = count(j, "batch");
    out->train.topk_ratio = (float)num(j, "topk_ratio", 0);
    json_t *dp = json_object_get(j, "dp");
    if (json_is_object(dp)) {
        out->dp.enabled = json_is_true(json_object_get(dp, "enabled"));
        out->dp.noise_multiplier = (float)num(dp, "noise_multiplier", 0);
        out->dp.max_grad_norm = (float)num(dp, "max_grad_norm", 0);
        out->dp.sample_rate = (float)num(dp, "sample_rate", 0);
        out->dp.target_epsilon = num(dp, "target_epsilon", 0);
        out->dp.delta = num(dp, "delta", 0);
    }
    json_decref(j);
    out->train.dp = &out->dp;
    memcpy(out->base_cid, r->base_cid, 32);
    nawal__round_announce__init(&out->msg);
    out->msg.round_id = (uint64_t)r->id;
    out->msg.base_model_cid.data = out->base_cid;
    out->msg.base_model_cid.len = 32;
    out->msg.base_model_size = (uint64_t)sb.st_size;
    out->msg.config = &out->train;
    out->msg.deadline_ms = (uint64_t)r->deadline_ms;
    out->msg.reward_pool_planck = r->pool_planck;
    out->msg.target_participants = r->target;
    out->msg.min_participants = r->min;
    nawal_patch_fields_set(s, r->base_cid, &out->patch, &out->msg.patch_cid, &out->msg.patch_from_cid,
                           &out->msg.patch_size);
    return 0;
}

void nawal_patch_fields_set(nawal_store *s, const uint8_t cid[32], nawal_patch_row *row, ProtobufCBinaryData *patch_cid,
                            ProtobufCBinaryData *from_cid, uint64_t *size) {
    memset(row, 0, sizeof *row);
    if (nawal_patch_find(s, cid, row, NULL, 0) != 1) return;
    *patch_cid = (ProtobufCBinaryData){32, row->patch_cid};
    *from_cid = (ProtobufCBinaryData){32, row->from_cid};
    *size = row->patch_size;
}

int nawal_result_build(nawal_store *s, const nawal_round *r, nawal_result_msg *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    nawal__round_result__init(&out->msg);
    out->msg.round_id = (uint64_t)r->id;
    if (r->state != NAWAL_ROUND_CLOSED) return 0;
    uint64_t seq;
    if (nawal_ledger_find_round(s, r->id, &seq, err, errlen) || nawal_ledger_get(s, seq, &out->rec, err, errlen))
        return -1;
    out->has_rec = 1;
    const nawal_ledger_entry *e = &out->rec.entry;
    out->msg.new_model_cid.data = out->rec.entry.model_cid;
    out->msg.new_model_cid.len = 32;
    out->accepted = calloc(e->n_updates + 1, sizeof *out->accepted);
    out->payouts = calloc(e->n_payouts + 1, sizeof *out->payouts);
    out->payout_ptrs = calloc(e->n_payouts + 1, sizeof *out->payout_ptrs);
    if (!out->accepted || !out->payouts || !out->payout_ptrs) return nawal_fail(err, errlen, "out of memory");
    for (size_t i = 0; i < e->n_updates; i++) {
        out->accepted[i].data = e->updates[i].validator;
        out->accepted[i].len = 32;
    }
    for (size_t i = 0; i < e->n_payouts; i++) {
        nawal__payout__init(&out->payouts[i]);
        out->payouts[i].validator.data = e->payouts[i].validator;
        out->payouts[i].validator.len = 32;
        out->payouts[i].amount_planck = e->payouts[i].amount_planck;
        out->payout_ptrs[i] = &out->payouts[i];
    }
    out->msg.n_accepted = e->n_updates;
    out->msg.accepted = out->accepted;
    out->msg.n_rewards = e->n_payouts;
    out->msg.rewards = out->payout_ptrs;
    return 0;
}

void nawal_result_free(nawal_result_msg *m) {
    free(m->accepted);
    free(m->payouts);
    free(m->payout_ptrs);
    if (m->has_rec) nawal_ledger_record_free(&m->rec);
    memset(m, 0, sizeof *m);
}
