/* trainer.h - the local training loop: random windows from a corpus's train
 * split, forward/backward, global-norm clipping, AdamW with warmup + cosine
 * (nanoGPT's recipe as defaults), progress lines, and evaluation over
 * consecutive non-overlapping windows. Used by `nawal-agent train/eval` and
 * by `nawal-bench train`.
 *
 * Resumable: with tc->ckpt the loop (and the DP-SGD loop of dp_train.h)
 * saves its whole state every ckpt->every steps (train_state.h: weights,
 * AdamW moments and step count, the step reached, the sampling generator)
 * and, with ckpt->resume, starts from the snapshot at ckpt->path when it
 * belongs to this run; a snapshot that cannot be written (a full disk) is
 * reported (NAWAL_CKPT_FAILED) and the run goes on without it. Resuming is
 * exact: on one backend and thread count, k steps, a snapshot, a fresh
 * process and the remaining S - k steps give the same bits as S steps
 * straight through. */
#ifndef NAWAL_TRAINER_H
#define NAWAL_TRAINER_H

#include "corpus.h"
#include "gpt.h"
#include "optim.h"
#include <stdio.h>

/* What a checkpointing loop tells its caller (nawal_train_ckpt.notify). */
typedef enum {
    NAWAL_CKPT_SAVED,    /* a snapshot of `step` steps done was written */
    NAWAL_CKPT_RESUMED,  /* the run continues at `step` from the snapshot */
    NAWAL_CKPT_REFUSED,  /* the file at path was not used (why: the reason); the run starts at step 0 */
    NAWAL_CKPT_FAILED,   /* the snapshot of `step` steps could not be written (why: the reason, e.g. a full
                          * disk): the previous one, if any, stays; training goes on (a snapshot is optional) */
} nawal_ckpt_event;

/* Snapshots of a training run (train_state.h). */
typedef struct {
    const char *path;     /* the snapshot file (replaced atomically at each save) */
    int every;            /* save after every `every` steps and after the last (0: never) */
    double min_interval_s; /* ... except within this many seconds of the last save or of the run's start (0: no limit) */
    int resume;           /* 1: start from path when it holds a snapshot of this very run */
    const void *tag;      /* the caller's bytes naming the run (e.g. round and base model): */
    size_t tag_len;       /*   part of the run's identity, so another run's snapshot is refused */
    /* called on every event (may be NULL: RESUMED and REFUSED then go to the loop's log) */
    void (*notify)(void *ctx, nawal_ckpt_event ev, int step, int steps, const char *why);
    void *ctx;
} nawal_train_ckpt;

typedef struct {
    int batch, steps, warmup;
    float lr, min_lr, weight_decay, beta1, beta2, eps, grad_clip;
    uint64_t seed;
    int log_every;      /* progress line every N steps (0 = never) */
    const nawal_train_ckpt *ckpt; /* NULL: no snapshots, start at step 0 */
} nawal_train_config;

typedef struct {
    float first_loss, last_loss;   /* train loss at the first and last step */
    double seconds, tokens_per_s;  /* wall time of the step loop only (this process's steps) */
    int start_step;                /* 0, or the step a snapshot let the run resume at */
} nawal_train_result;

/* nanoGPT's CPU recipe: batch 12, 2000 steps, lr 1e-3 -> 1e-4 cosine, 100
 * warmup, AdamW (0.9, 0.99), weight decay 0.1, clip 1.0, seed 1337; no
 * snapshots. */
void nawal_train_config_default(nawal_train_config *c);

/* Trains m on the train split of the token stream. log (may be NULL) gets
 * progress lines. Returns 0, or -1 with a message (e.g. a split shorter
 * than one window). */
int nawal_train_run(nawal_gpt *m, const int32_t *train, size_t n_train, const nawal_train_config *tc,
                    FILE *log, nawal_train_result *res, char *err, size_t errlen);

/* Mean cross-entropy (nats per predicted token) over toks[0..n): window k has
 * inputs toks[kT, kT+T) and targets shifted by one, T = the model's context;
 * the last partial window counts while it has at least one target.
 * Requires n >= 2. */
int nawal_eval_tokens(nawal_gpt *m, const int32_t *toks, size_t n, double *loss, size_t *n_predicted,
                      char *err, size_t errlen);

/* The loops' small helpers: splitmix64 (seeded batch sampling) and a
 * monotonic clock in seconds. */
uint64_t nawal_splitmix64(uint64_t *state);
double nawal_monotonic_s(void);

#endif
