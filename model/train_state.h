/* train_state.h - the snapshot of a training run on disk, so that a killed
 * process resumes its training where the last snapshot left it (the loops
 * of trainer.h and dp_train.h save and load it through train_ckpt.h). A
 * snapshot holds everything the next step depends on: the weights, the
 * AdamW moments m and v and their step count, the steps done of the run's
 * total (the learning-rate schedule is a function of it), the run's seed
 * and its sampling generator's state, the first and last loss, and for
 * DP-SGD the epsilon spent so far and, in seeded runs only, the noise key
 * (an unseeded run never writes its key: it draws a fresh one on resume,
 * see dp_train.h).
 *
 * File format, version 1 (integers little-endian; floats as the host
 * stores them, little-endian wherever nawal runs, as in safetensors):
 *   0    8  magic "NAWALTS\0"
 *   8    4  version (1)
 *   12   4  kind: 1 plain training, 2 DP-SGD
 *   16  32  the run's identity (nawal_train_state_id)
 *   48   8  n_params
 *   56   4  step (steps done)      60  4  steps (the run's total)
 *   64   4  optimizer step count   68  4  flags: 1 m stored, 2 v stored, 4 noise key stored
 *   72   8  seed                   80  8  sampling generator state
 *   88   8  noise key (0 when not stored)
 *   96   4  first loss             100 4  last loss (float bits)
 *   104  8  epsilon spent (double bits)
 *   112     params[n_params], then m[n_params] and v[n_params] when flagged (f32)
 *   end-32  BLAKE2b-256 (libsodium, cid.h) of every byte before it
 * It is written with nawal_file_replace (temporary file, fsync, rename,
 * fsync of the directory): a reader sees the previous snapshot or the new
 * one. A load checks magic, version, parameter count, size (truncated or
 * extended), checksum, kind, identity and step range, in that order, each
 * refusal with a message naming the file, and touches the model only once
 * all passed. Memory: a save or a load holds 3 n_params floats on the host.
 *
 * Functions return 0 (or 1, see below) on success and -1 with a message in
 * (err, errlen). */
#ifndef NAWAL_TRAIN_STATE_H
#define NAWAL_TRAIN_STATE_H

#include "trainer.h"

#include <stdint.h>

#define NAWAL_TRAIN_STATE_VERSION 1

typedef enum { NAWAL_TRAIN_PLAIN = 1, NAWAL_TRAIN_DP = 2 } nawal_train_kind;

/* The loop's state besides the model's buffers (params, opt_m, opt_v, opt_step). */
typedef struct {
    nawal_train_kind kind;
    int step, steps;              /* steps done, of the run's total */
    uint64_t seed, rng;           /* the run's seed, its sampling generator's state */
    int has_noise_key;            /* DP: 1 when noise_key is stored (seeded runs) */
    uint64_t noise_key;
    float first_loss, last_loss;
    double epsilon_spent;         /* DP: epsilon after the last step done (0 for plain runs) */
} nawal_train_state;

/* id = BLAKE2b-256 of what makes a run this run: the model's config and
 * parameter count, the training config (all of it but the seed, which the
 * snapshot carries, and log_every), the training tokens, the loop's own
 * parameters extra[0..extra_len) (DP-SGD: its sampling rate, noise, clip
 * norm, target), and tc->ckpt's tag when there is one. */
int nawal_train_state_id(uint8_t id[32], const nawal_gpt *m, const int32_t *train, size_t n_train,
                         const nawal_train_config *tc, nawal_train_kind kind, const void *extra, size_t extra_len);

/* Writes m's parameters and optimizer state with *st as the snapshot of run id. */
int nawal_train_state_save(const char *path, const nawal_gpt *m, const nawal_train_state *st, const uint8_t id[32],
                           char *err, size_t errlen);

/* Loads the snapshot at path into m and *st when it is one of run id, of
 * kind st->kind and st->steps steps: returns 1. Returns 0 when there is no
 * file, -1 with the reason when it is refused (m and *st then untouched). */
int nawal_train_state_load(const char *path, nawal_gpt *m, nawal_train_state *st, const uint8_t id[32], char *err,
                           size_t errlen);

#endif
