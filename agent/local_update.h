/* local_update.h - one round's work on the validator's own data: load the
 * round's base model (safetensors, its config in the metadata as genesis.c
 * writes it), train it with the round's config (trainer.h, or DP-SGD from
 * dp_train.h when the round asks for it, charging the privacy budget kept
 * in the key directory), compute delta = local - base as one flat float
 * vector in the order of the base file's tensors (proto/flat_model.h), and write
 * the update file into the state directory:
 *   - codec (default): a delta_codec.h frame, top-k with the round's
 *     topk_ratio (dense when it is 0 or 1), fp16 values, error feedback
 *     from DIR/residual.f32; the new residual is staged as
 *     residual.pending.f32 (state.h) until the update is acknowledged;
 *   - dense: a safetensors file with the base's tensor names and shapes
 *     holding the delta (what the coordinator's dense aggregation source
 *     reads).
 * The resulting submission record (acked 0) is filled in, not saved.
 *
 * The local training is resumable: it snapshots its state (model/train_state.h)
 * into DIR/train.ckpt every 10% of the round's steps (rounded up) and after
 * the last, tagged with the round id, the base model's CID and the round
 * plan. A restarted agent given the same round resumes from the snapshot
 * ("round R: resuming local training at step k of S from the checkpoint")
 * instead of starting over; a snapshot of another round, base or plan, or a
 * damaged one, is refused with the reason, removed, and training starts at
 * step 0. Temporary files of snapshots a killed agent was writing
 * (train.ckpt.tmp.*) are removed when the training starts; a snapshot that
 * cannot be written is skipped with a warning. The snapshot itself stays
 * until the update is on record: the caller removes it once the submission
 * record is saved (nawal_agent_train_ckpt_remove, state.h), so that a
 * kill in between resumes from the last snapshot instead of training the
 * round again. DP-SGD steps are charged to the privacy budget as they run,
 * so steps executed again after a resume are charged again, and a resumed
 * run draws fresh noise (model/dp_train.h).
 *
 * Test hook: with NAWAL_AGENT_TEST_CRASH=train:K in the environment the
 * process exits (status 3) right after writing the snapshot at step K, as if
 * killed during the local training. Any NAWAL_AGENT_TEST_CRASH writes every
 * due snapshot (no minimum interval between them). With
 * NAWAL_AGENT_TEST_ATTACK=scale:S (or =noise:SIGMA) the agent plays a
 * Byzantine validator: it sends S times its honest delta (or Gaussian noise
 * of standard deviation SIGMA) instead, for the robust-aggregation runs of
 * `nawal-coordinator sim --byzantine`.
 *
 * Quality reported to the coordinator: v0 / (v0 + v1), with v0 and v1 the
 * validation loss before and after training (0.5 = no change, above = the
 * update helped; 0.5 when the corpus has no validation split). */
#ifndef NAWAL_AGENT_LOCAL_UPDATE_H
#define NAWAL_AGENT_LOCAL_UPDATE_H

#include "session.h"
#include "state.h"

typedef struct {
    uint64_t round_id;
    uint8_t base_cid[32];
    uint32_t steps, batch;
    float lr, topk_ratio;
    int dp;
    float noise_multiplier, max_grad_norm, sample_rate;
    double target_epsilon, delta;
} nawal_round_plan;

/* The model file is ag->state_dir/models/<base cid>.safetensors. Runs on
 * nawal-agent run's training thread (session.c): it reads the agent's fixed
 * fields only (ops, tok, corpus, directories, id, delta_codec) and prints its
 * progress lines to stdout, one printf per line. */
int nawal_agent_local_update(nawal_agent *ag, const nawal_round_plan *p, nawal_agent_submission *out, char *err,
                             size_t errlen);

#endif
