/* optim.h - optimizers and schedules over a nawal_gpt's flat parameters:
 * AdamW (decoupled decay on matrices only, nanoGPT's grouping), SGD with
 * momentum, global-norm gradient clipping, warmup + cosine learning rate. */
#ifndef NAWAL_OPTIM_H
#define NAWAL_OPTIM_H

#include "gpt.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
} nawal_adamw_config;

/* Allocates the optimizer state (m, and v with need_v), zero-filled, when
 * missing. Returns 0, or -1 when it cannot be allocated. */
int nawal_gpt_optim_state_alloc(nawal_gpt *m, int need_v);
/* One AdamW step at learning rate lr; state allocated on first use.
 * Returns 0, or -1 if the optimizer state cannot be allocated. */
int nawal_gpt_adamw_step(nawal_gpt *m, const nawal_adamw_config *c, float lr);
/* One SGD step with momentum and weight decay (decay on matrices only). */
int nawal_gpt_sgd_step(nawal_gpt *m, float lr, float momentum, float weight_decay);
/* Scales gradients so their global L2 norm is at most max_norm (if > 0);
 * returns the norm before clipping. */
float nawal_gpt_clip_grad_norm(nawal_gpt *m, float max_norm);
/* Linear warmup over `warmup` steps then cosine decay to min_lr at `total`
 * (nanoGPT's get_lr; step is 0-based). */
float nawal_lr_schedule(int step, int warmup, int total, float max_lr, float min_lr);

#endif
