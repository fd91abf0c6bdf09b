/* state.h - what nawal-agent run keeps in its state directory (--state DIR,
 * default KEY_DIR/state), so that a restarted agent resumes where it was:
 *
 *   DIR/models/<cid hex>.safetensors   global models downloaded, by CID
 *                                      (a cached file is used only when its
 *                                      BLAKE2b still matches its name)
 *   DIR/deltas/<cid hex>               the update frames this agent made
 *   DIR/patches/<cid hex>              a model patch being downloaded (its
 *                                      .part) or applied (proto/model_patch.h):
 *                                      removed once applied to a cached model
 *   DIR/submission                     the last update made, text:
 *       nawal-agent-submission-v1
 *       round <u64>            base <cid hex>      delta <cid hex>
 *       size <u64>             examples <u64>      epsilon <double>
 *       quality <float>        train_loss <float>  val_loss <float>
 *       tokens_per_s <double>  acked <0|1>
 *     (one key per line, in this order), replaced atomically (fileio.h). It
 *     is written with acked 0 before the UpdateSubmit goes out and with
 *     acked 1 once the coordinator acknowledged it (or said ERR_DUPLICATE:
 *     already on record), so an update is trained once per round and
 *     submitted until acknowledged, never replaced by another.
 *   DIR/joined                         "round <u64>\n": the last round the
 *                                      coordinator acknowledged our Join for
 *                                      (a restarted agent does not join again:
 *                                      the join window may have closed)
 *   DIR/residual.f32                   error-feedback residual of the delta
 *                                      codec: raw little-endian floats, one
 *                                      per model parameter
 *   DIR/residual.pending.f32           the residual the unacknowledged
 *                                      update leaves; renamed over
 *                                      residual.f32 when it is acknowledged
 *   DIR/train.ckpt                     the snapshot of the local training
 *                                      in progress (model/train_state.h),
 *                                      tagged with its round, base model and
 *                                      round plan: a restarted agent resumes
 *                                      that round's training from it
 *                                      (local_update.h); removed once the
 *                                      submission record of its update is
 *                                      saved (or the round it trains for is
 *                                      over)
 *
 * Functions return 0, or -1 with a message naming the file. */
#ifndef NAWAL_AGENT_STATE_H
#define NAWAL_AGENT_STATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t round;
    uint8_t base[32], delta[32];
    uint64_t size, examples;
    double epsilon;
    float quality, train_loss, val_loss;
    double tokens_per_s;
    int acked;
} nawal_agent_submission;

/* Creates DIR, DIR/models, DIR/deltas and DIR/patches (mode 0700) when missing. */
int nawal_agent_state_init(const char *dir, char *err, size_t errlen);

/* Path helpers (snprintf into out; -1 when it does not fit). */
int nawal_agent_model_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]);
int nawal_agent_delta_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]);
int nawal_agent_patch_path(char *out, size_t cap, const char *dir, const uint8_t cid[32]);
int nawal_agent_train_ckpt_path(char *out, size_t cap, const char *dir);
/* Removes DIR/train.ckpt and its leftover temporary files (best effort):
 * the update it was the training of is on record. */
void nawal_agent_train_ckpt_remove(const char *dir);

/* 1 when DIR/models/<cid> exists and hashes to cid, 0 when not (a file
 * that does not match is removed), -1 on an I/O error. */
int nawal_agent_model_cached(const char *dir, const uint8_t cid[32], char *err, size_t errlen);

/* 1 and *s filled when DIR/submission exists, 0 when it does not, -1 when
 * it cannot be read or is malformed. */
int nawal_agent_submission_load(const char *dir, nawal_agent_submission *s, char *err, size_t errlen);
int nawal_agent_submission_save(const char *dir, const nawal_agent_submission *s, char *err, size_t errlen);

/* The last round joined (0 when none is recorded). */
uint64_t nawal_agent_joined_load(const char *dir);
int nawal_agent_joined_save(const char *dir, uint64_t round, char *err, size_t errlen);

/* Reads DIR/residual.f32 into r[0..n) (zeros when missing; a file of
 * another length is ignored with a warning on stderr: the model changed
 * shape). */
int nawal_agent_residual_load(const char *dir, float *r, size_t n, char *err, size_t errlen);
/* Writes r[0..n) as DIR/residual.pending.f32 (atomically). */
int nawal_agent_residual_stage(const char *dir, const float *r, size_t n, char *err, size_t errlen);
/* Renames residual.pending.f32 over residual.f32 (a no-op without one). */
int nawal_agent_residual_commit(const char *dir, char *err, size_t errlen);
/* Removes residual.pending.f32 (its update will never count). */
void nawal_agent_residual_discard(const char *dir);

#endif
