/* train_ckpt.h - what the training loops (trainer.c, dp_train.c) do with
 * tc->ckpt (trainer.h): at the start, resume from the snapshot at
 * ckpt->path when it is a valid one of this run, or say why it was refused
 * and start at step 0; after each step, write a snapshot (train_state.h)
 * when one is due and tell the caller (also when it could not be written:
 * the run goes on without it). */
#ifndef NAWAL_TRAIN_CKPT_H
#define NAWAL_TRAIN_CKPT_H

#include "train_state.h"

#include <stdio.h>

/* With tc->ckpt: computes the run's identity into id (extra: the loop's own
 * parameters, see nawal_train_state_id) and, with ckpt->resume, loads the
 * snapshot into m and *st (whose kind and steps must be set). Returns 1
 * when the run resumes (RESUMED notified), 0 when it starts at step 0 (no
 * ckpt, no file, or a refused one: REFUSED notified), -1 on an error. The
 * notifications go to log when ckpt->notify is NULL. */
int nawal_train_ckpt_begin(const nawal_train_config *tc, nawal_gpt *m, const int32_t *train, size_t n_train,
                           const void *extra, size_t extra_len, nawal_train_state *st, uint8_t id[32], FILE *log,
                           char *err, size_t errlen);

/* After a step, st->step steps done: with tc->ckpt, writes the snapshot
 * when ckpt->every divides st->step or it was the run's last step, unless
 * the last save (*last_s, monotonic seconds: the loop sets it to its start
 * time, a save or a failed one to its time) was less than
 * ckpt->min_interval_s ago, and notifies SAVED. A snapshot is optional: one
 * that cannot be written (full disk, out of memory; no temporary file is
 * left) is notified as FAILED, with a warning on log (stderr when NULL)
 * when ckpt->notify is NULL, and the run goes on. */
void nawal_train_ckpt_step(const nawal_train_config *tc, const nawal_gpt *m, const nawal_train_state *st,
                           const uint8_t id[32], double *last_s, FILE *log);

#endif
