/* dp_train.h - the DP-SGD training loop: Poisson sampling of examples
 * (non-overlapping windows of the train split) with rate q, physical
 * micro-batches of at most the model's max batch, per-example clipping and
 * Gaussian noise (dp.h), AdamW, and privacy accounting before every step:
 * the run stops before the step that would take epsilon past the target,
 * and says so. With a budget (privacy_budget.h) the spend is persisted
 * after every step and composed across runs. Used by `nawal-agent train
 * --dp` and `nawal-bench train --dp`.
 *
 * Snapshots (tc->ckpt, trainer.h) work as in the plain loop and also hold
 * the steps done and the epsilon spent so far; the run's identity covers
 * q, sigma, the clip norm, the target and whether it is seeded. A step is
 * charged (budget file or this run's accountant) before the snapshot that
 * includes it is written. On a resume the budget already holds every step
 * the killed process executed, those after the snapshot included, and the
 * steps executed again are charged again: never fewer steps accounted than
 * executed. Without a budget the run's accountant starts from the
 * snapshot's step count. Noise on a resume: see dp_train.c (a production
 * run draws a fresh noise key; only seeded runs store and reuse theirs). */
#ifndef NAWAL_DP_TRAIN_H
#define NAWAL_DP_TRAIN_H

#include "privacy_budget.h"
#include "trainer.h"

typedef struct {
    float max_grad_norm;          /* C, > 0 */
    double sample_rate;           /* q in (0, 1]; 0: batch / number of examples */
    double epsilon, delta;        /* target (epsilon 0: none; then noise_multiplier is required) */
    double noise_multiplier;      /* sigma; 0: the smallest reaching epsilon after all steps */
    nawal_privacy_budget *budget; /* may be NULL: spend accounted for this run only */
    int seeded;                   /* 1: sampling and noise keyed by tc->seed (tests); 0: libsodium's CSPRNG */
} nawal_dp_train_config;

typedef struct {
    /* epsilon_spent, at dc->delta: with a budget, the budget's total (every run's steps, each one executed
     * charged: also those of a killed run after its last snapshot), from the start of the run on, also when
     * it stops before its first step; without one, this run's (a resumed run's snapshot steps included) */
    double sample_rate, noise_multiplier, epsilon_spent, expected_batch;
    size_t n_examples;
    int steps_done;
    int stopped_by_budget;        /* 1: stopped before a step that would cross epsilon */
} nawal_dp_report;

/* Resolves q and sigma for the run (filling rep) without training: the
 * checks a CLI prints before starting. */
int nawal_dp_train_plan(const nawal_gpt *m, size_t n_train, const nawal_train_config *tc,
                        const nawal_dp_train_config *dc, nawal_dp_report *rep, char *err, size_t errlen);

/* Trains like nawal_train_run, privately. Returns 0 (also when the budget
 * stopped the run: see rep->stopped_by_budget), or -1 with a message. */
int nawal_dp_train_run(nawal_gpt *m, const int32_t *train, size_t n_train, const nawal_train_config *tc,
                       const nawal_dp_train_config *dc, FILE *log, nawal_train_result *res, nawal_dp_report *rep,
                       char *err, size_t errlen);

#endif
