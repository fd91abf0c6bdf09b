/* optim.c - AdamW / SGD steps, gradient clipping and the LR schedule.
 * Each step walks the model's tensor table so weight decay applies only to
 * tensors marked `decay` (2-D weights), and calls the backend's update once
 * per run of adjacent tensors with the same decay (fewer launches on a GPU;
 * the update is per element, so the result is the same). */
#include "optim.h"
#include <math.h>

int nawal_gpt_optim_state_alloc(nawal_gpt *m, int need_v) {
    const nawal_ops *o = m->ops;
    if (!m->opt_m) {
        m->opt_m = o->alloc(o, m->n_params * sizeof(float));
        if (!m->opt_m) return -1;
        o->fill(o, m->opt_m, 0.0f, m->n_params);
    }
    if (need_v && !m->opt_v) {
        m->opt_v = o->alloc(o, m->n_params * sizeof(float));
        if (!m->opt_v) return -1;
        o->fill(o, m->opt_v, 0.0f, m->n_params);
    }
    return 0;
}

/* Tensors [*i, end) form the next run: adjacent in the flat buffer, same
 * decay flag. Returns the run's offset and length; advances *i. */
static void next_run(const nawal_gpt *m, int *i, size_t *off, size_t *n, int *decay) {
    const nawal_param_tensor *t = &m->tensors[*i];
    *off = t->offset;
    *n = t->numel;
    *decay = t->decay;
    for ((*i)++; *i < m->n_tensors; (*i)++) {
        const nawal_param_tensor *u = &m->tensors[*i];
        if (u->decay != *decay || u->offset != *off + *n) break;
        *n += u->numel;
    }
}

int nawal_gpt_adamw_step(nawal_gpt *m, const nawal_adamw_config *c, float lr) {
    if (nawal_gpt_optim_state_alloc(m, 1)) return -1;
    m->opt_step++;
    size_t off, n;
    int decay;
    for (int i = 0; i < m->n_tensors;) {
        next_run(m, &i, &off, &n, &decay);
        m->ops->adamw(m->ops, m->params + off, m->grads + off, m->opt_m + off, m->opt_v + off, n, lr, c->beta1,
                      c->beta2, c->eps, decay ? c->weight_decay : 0.0f, m->opt_step);
    }
    return 0;
}

int nawal_gpt_sgd_step(nawal_gpt *m, float lr, float momentum, float weight_decay) {
    if (nawal_gpt_optim_state_alloc(m, 0)) return -1;
    m->opt_step++;
    size_t off, n;
    int decay;
    for (int i = 0; i < m->n_tensors;) {
        next_run(m, &i, &off, &n, &decay);
        m->ops->sgd(m->ops, m->params + off, m->grads + off, m->opt_m + off, n, lr, momentum,
                    decay ? weight_decay : 0.0f);
    }
    return 0;
}

float nawal_gpt_clip_grad_norm(nawal_gpt *m, float max_norm) {
    float norm = (float)sqrt(m->ops->sumsq(m->ops, m->grads, m->n_params));
    if (max_norm > 0.0f && norm > max_norm)
        m->ops->scale(m->ops, m->grads, max_norm / (norm + 1e-6f), m->n_params);
    return norm;
}

float nawal_lr_schedule(int step, int warmup, int total, float max_lr, float min_lr) {
    if (step < warmup) return max_lr * (float)(step + 1) / (float)(warmup + 1);
    if (step >= total) return min_lr;
    double ratio = (double)(step - warmup) / (double)(total - warmup);
    double coeff = 0.5 * (1.0 + cos(M_PI * ratio));
    return (float)(min_lr + coeff * (max_lr - min_lr));
}
