/* local_update.c - see local_update.h. */
#include "local_update.h"
#include "checkpoint.h"
#include "cid.h"
#include "delta_codec.h"
#include "dp_train.h"
#include "error.h"
#include "evaluate.h"
#include "fileio.h"
#include "flat_model.h"
#include "safetensors.h"
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <unistd.h>

/* Local training snapshots: every 10% of the round's steps (rounded up), and after the last,
 * but at most one per CKPT_MIN_INTERVAL_S (a round of a few seconds is cheaper to redo than to
 * snapshot: a snapshot writes three model-sized arrays and fsyncs them). The crash test hooks
 * (NAWAL_AGENT_TEST_CRASH=train:K, =collect) lift the interval so that every due snapshot is
 * written. */
#define CKPT_EVERY(steps) (((steps) + 9) / 10)
#define CKPT_MIN_INTERVAL_S 20.0

/* delta[0..n) = local - base in flat order (proto/flat_model.h). */
static int compute_delta(const nawal_gpt *m, const nawal_st_file *f, const size_t *order, float *delta, size_t n,
                         const char *path, char *err, size_t errlen) {
    float *local = malloc(m->n_params * sizeof(float));
    if (!local) return nawal_fail(err, errlen, "out of memory for a %zu-parameter model", m->n_params);
    m->ops->download(m->ops, local, m->params, m->n_params * sizeof(float));
    size_t pos = 0;
    int rc = 0;
    for (size_t k = 0; k < nawal_st_count(f) && rc == 0; k++) {
        const nawal_st_tensor *t = nawal_st_at(f, order[k]);
        const nawal_param_tensor *p = nawal_gpt_find_tensor(m, t->name);
        size_t numel = t->nbytes / sizeof(float);
        if (!p || t->dtype != NAWAL_ST_F32 || p->numel != numel || pos + numel > n) {
            rc = nawal_fail(err, errlen, "%s: tensor \"%s\" does not match the model", path, t->name);
            break;
        }
        const float *b = t->data;
        for (size_t j = 0; j < numel; j++) delta[pos + j] = local[p->offset + j] - b[j];
        pos += numel;
    }
    if (rc == 0 && (pos != n || n != m->n_params))
        rc = nawal_fail(err, errlen, "%s: holds %zu parameters, the model %zu", path, pos, m->n_params);
    free(local);
    return rc;
}

/* Test hook (local_update.h): NAWAL_AGENT_TEST_ATTACK=scale:S sends S x the
 * honest delta, =noise:SIGMA Gaussian noise of standard deviation SIGMA
 * instead of it. 0, or -1 when the variable is set but not understood. */
static int attack_delta(float *delta, size_t n, uint64_t round, char *err, size_t errlen) {
    const char *a = getenv("NAWAL_AGENT_TEST_ATTACK");
    if (!a || !*a) return 0;
    char *end;
    int scale = !strncmp(a, "scale:", 6), noise = !strncmp(a, "noise:", 6);
    double v = scale || noise ? strtod(a + 6, &end) : NAN;
    if (!(scale || noise) || end == a + 6 || *end || !isfinite(v))
        return nawal_fail(err, errlen, "NAWAL_AGENT_TEST_ATTACK=%s: expected scale:S or noise:SIGMA", a);
    uint64_t st;
    randombytes_buf(&st, sizeof st); /* each attacker its own noise */
    for (size_t i = 0; i < n; i++) {
        if (scale) {
            delta[i] = (float)(v * delta[i]);
            continue;
        }
        double u[2];
        for (int k = 0; k < 2; k++) { /* splitmix64 */
            uint64_t z = (st += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            u[k] = ((double)((z ^ (z >> 31)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        }
        delta[i] = (float)(v * sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
    }
    fprintf(stderr, "NAWAL_AGENT_TEST_ATTACK=%s: round %llu's delta replaced\n", a, (unsigned long long)round);
    return 0;
}

/* The local training's snapshots (state.h: DIR/train.ckpt). */
typedef struct {
    uint64_t round;
    const char *path;
    int crash_at; /* NAWAL_AGENT_TEST_CRASH=train:K: exit after the snapshot at step K (0: never) */
} ckpt_ctx;

static void on_ckpt(void *ctx, nawal_ckpt_event ev, int step, int steps, const char *why) {
    const ckpt_ctx *c = ctx;
    if (ev == NAWAL_CKPT_RESUMED) {
        printf("round %llu: resuming local training at step %d of %d from the checkpoint\n", (unsigned long long)c->round,
               step, steps);
    } else if (ev == NAWAL_CKPT_REFUSED) {
        printf("round %llu: %s; removed, training from step 0\n", (unsigned long long)c->round, why);
        unlink(c->path);
    } else if (ev == NAWAL_CKPT_FAILED) { /* optional: the training goes on (a restart resumes from an older one) */
        fprintf(stderr, "warning: round %llu: no checkpoint at step %d of %d: %s\n", (unsigned long long)c->round,
                step, steps, why);
    } else if (step == c->crash_at) { /* tests: die as if killed during the local training */
        fprintf(stderr, "NAWAL_AGENT_TEST_CRASH=train:%d: exiting after the checkpoint at step %d\n", step, step);
        fflush(NULL);
        _exit(3);
    }
    fflush(stdout);
}

/* The bytes naming this round's training in its snapshot: round, base model and plan, field by field (no padding). */
static size_t plan_tag(const nawal_round_plan *p, uint8_t *out) {
    size_t n = 0;
#define PUT(x) (memcpy(out + n, &(x), sizeof(x)), n += sizeof(x))
    PUT(p->round_id), PUT(p->base_cid), PUT(p->steps), PUT(p->batch), PUT(p->lr), PUT(p->topk_ratio), PUT(p->dp);
    PUT(p->noise_multiplier), PUT(p->max_grad_norm), PUT(p->sample_rate), PUT(p->target_epsilon), PUT(p->delta);
#undef PUT
    return n;
}

static int train(nawal_agent *ag, nawal_gpt *m, const nawal_round_plan *p, nawal_train_result *res, double *eps,
                 uint64_t *examples, char *err, size_t errlen) {
    *eps = 0.0;
    *examples = (uint64_t)p->steps * p->batch;
    nawal_train_config tc;
    nawal_train_config_default(&tc);
    tc.steps = (int)p->steps;
    tc.batch = (int)p->batch;
    tc.lr = p->lr;
    tc.min_lr = p->lr / 10;
    tc.warmup = tc.steps / 10;
    tc.log_every = tc.steps >= 5 ? tc.steps / 5 : 1;
    randombytes_buf(&tc.seed, sizeof tc.seed);
    char path[4096];
    uint8_t tag[sizeof *p];
    if (nawal_agent_train_ckpt_path(path, sizeof path, ag->state_dir)) return nawal_fail(err, errlen, "%s: path too long", ag->state_dir);
    nawal_file_leftovers_remove(path); /* temporary files of snapshots a killed agent was writing */
    const char *crash = getenv("NAWAL_AGENT_TEST_CRASH");
    ckpt_ctx cc = { p->round_id, path, crash && !strncmp(crash, "train:", 6) ? atoi(crash + 6) : 0 };
    nawal_train_ckpt ck = { .path = path, .every = CKPT_EVERY(tc.steps), .min_interval_s = crash ? 0 : CKPT_MIN_INTERVAL_S,
                            .resume = 1, .tag = tag, .tag_len = plan_tag(p, tag), .notify = on_ckpt, .ctx = &cc };
    tc.ckpt = &ck;
    if (!p->dp) return nawal_train_run(m, ag->corpus.tokens, ag->corpus.n_train, &tc, stdout, res, err, errlen);

    nawal_dp_train_config dc = {.max_grad_norm = p->max_grad_norm, .sample_rate = p->sample_rate,
                                .epsilon = p->target_epsilon, .delta = p->delta,
                                .noise_multiplier = p->noise_multiplier, .budget = NULL, .seeded = 0};
    if (nawal_privacy_budget_open(&dc.budget, ag->key_dir, &ag->id, p->delta, 1, err, errlen)) return -1;
    nawal_dp_report rep;
    int rc = nawal_dp_train_run(m, ag->corpus.tokens, ag->corpus.n_train, &tc, &dc, stdout, res, &rep, err, errlen);
    nawal_privacy_budget_close(dc.budget);
    if (rc) return -1;
    if (rep.steps_done == 0) return nawal_fail(err, errlen, "the privacy budget allows no step of this round");
    *eps = rep.epsilon_spent;
    *examples = (uint64_t)llround(rep.expected_batch * rep.steps_done);
    if (*examples == 0) *examples = 1;
    printf("round %llu: dp-sgd %d steps, sample rate %.4g, noise multiplier %.4f, epsilon spent %.4f (delta %g)%s\n",
           (unsigned long long)p->round_id, rep.steps_done, rep.sample_rate, rep.noise_multiplier, rep.epsilon_spent,
           p->delta, rep.stopped_by_budget ? ", stopped by the privacy budget" : "");
    return 0;
}

/* Writes the update file for delta[0..n) into the state dir; fills s->delta and s->size. */
static int write_update(nawal_agent *ag, const nawal_round_plan *p, const nawal_st_file *f, const size_t *order,
                        const float *delta, size_t n, nawal_agent_submission *s, char *err, size_t errlen) {
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof tmp, "%s/deltas/update.tmp", ag->state_dir);
    int rc = -1;
    if (ag->delta_codec) {
        float *residual = malloc(n * sizeof(float));
        uint8_t *frame = NULL;
        size_t len = 0;
        nawal_delta_params dp;
        nawal_delta_params_default(&dp);
        dp.ratio = p->topk_ratio > 0.0f && p->topk_ratio < 1.0f ? p->topk_ratio : 1.0f;
        if (!residual) return nawal_fail(err, errlen, "out of memory for the residual");
        if (nawal_agent_residual_load(ag->state_dir, residual, n, err, errlen) == 0 &&
            nawal_delta_encode(ag->ops, &dp, delta, residual, n, &frame, &len, err, errlen) == 0 &&
            nawal_agent_residual_stage(ag->state_dir, residual, n, err, errlen) == 0) {
            nawal_chunk c = {frame, len};
            rc = nawal_file_replace(tmp, &c, 1, 0600, err, errlen);
            if (rc == 0) printf("round %llu: delta of %zu parameters encoded: %s ratio %g, %zu bytes (%.1f%% of dense fp32)\n",
                                (unsigned long long)p->round_id, n, dp.ratio < 1.0f ? "top-k" : "dense", (double)dp.ratio,
                                len, 100.0 * (double)len / ((double)n * 4));
        }
        free(frame);
        free(residual);
    } else {
        size_t nt = nawal_st_count(f), pos = 0;
        nawal_st_tensor *ts = calloc(nt ? nt : 1, sizeof *ts);
        if (!ts) return nawal_fail(err, errlen, "out of memory");
        for (size_t k = 0; k < nt; k++) {
            ts[k] = *nawal_st_at(f, order[k]);
            ts[k].data = delta + pos;
            pos += ts[k].nbytes / sizeof(float);
        }
        rc = nawal_st_write(tmp, ts, nt, NULL, err, errlen);
        free(ts);
    }
    if (rc) return -1;
    if (nawal_cid_of_file(s->delta, &s->size, tmp, err, errlen) ||
        nawal_agent_delta_path(path, sizeof path, ag->state_dir, s->delta)) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return nawal_fail(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    nawal_fsync_parent_dir(path);
    return 0;
}

int nawal_agent_local_update(nawal_agent *ag, const nawal_round_plan *p, nawal_agent_submission *out, char *err,
                             size_t errlen) {
    char path[4096];
    nawal_st_file *f = NULL;
    nawal_gpt *m = NULL;
    size_t *order = NULL;
    float *delta = NULL;
    int rc = -1;
    memset(out, 0, sizeof *out);
    if (nawal_agent_model_path(path, sizeof path, ag->state_dir, p->base_cid))
        return nawal_fail(err, errlen, "%s: path too long", ag->state_dir);
    nawal_gpt_config cfg;
    if (nawal_st_read(&f, path, err, errlen) || nawal_st_model_config(f, &cfg, path, err, errlen)) goto out;
    if (nawal_tokenizer_vocab_size(ag->tok) > cfg.vocab) {
        nawal_fail(err, errlen, "the round's model has a vocabulary of %d tokens, the tokenizer %d", cfg.vocab,
                   nawal_tokenizer_vocab_size(ag->tok));
        goto out;
    }
    if (nawal_gpt_create(&m, ag->ops, &cfg, (int)p->batch, err, errlen) ||
        nawal_checkpoint_load_weights(m, path, err, errlen))
        goto out;
    uint64_t n64 = 0;
    if (!(order = malloc((nawal_st_count(f) + 1) * sizeof *order))) {
        nawal_fail(err, errlen, "out of memory");
        goto out;
    }
    if (nawal_flat_order(f, order, &n64, err, errlen)) goto out;
    size_t n = (size_t)n64;

    double v0, v1, eps;
    uint64_t examples;
    nawal_train_result res;
    uint64_t val_tokens; /* evaluate.h: the base's loss is remembered by CID, measured once */
    if (nawal_agent_model_val_loss(ag, p->base_cid, m, &v0, &val_tokens, err, errlen)) goto out;
    fflush(stdout);
    if (train(ag, m, p, &res, &eps, &examples, err, errlen)) goto out;
    if (nawal_agent_val_loss(m, &ag->corpus, &v1, &val_tokens, err, errlen)) goto out;
    printf("round %llu: trained %u steps in %.1f s, loss %.4f -> %.4f, %.0f tokens/s, val loss %.4f -> %.4f\n",
           (unsigned long long)p->round_id, p->steps, res.seconds, (double)res.first_loss, (double)res.last_loss,
           res.tokens_per_s, v0, v1);

    if (!(delta = malloc((n ? n : 1) * sizeof *delta))) {
        nawal_fail(err, errlen, "out of memory for a %zu-float delta", n);
        goto out;
    }
    if (compute_delta(m, f, order, delta, n, path, err, errlen)) goto out;
    if (attack_delta(delta, n, p->round_id, err, errlen)) goto out;
    if (write_update(ag, p, f, order, delta, n, out, err, errlen)) goto out;
    out->round = p->round_id;
    memcpy(out->base, p->base_cid, 32);
    out->examples = examples;
    out->epsilon = eps;
    out->quality = v0 + v1 > 0 && isfinite(v0 + v1) ? (float)(v0 / (v0 + v1)) : 0.5f;
    out->train_loss = res.last_loss;
    out->val_loss = (float)v1;
    out->tokens_per_s = res.tokens_per_s;
    out->acked = 0;
    rc = 0;
out:
    fflush(stdout);
    free(delta);
    free(order);
    nawal_gpt_free(m);
    nawal_st_free(f);
    return rc;
}
