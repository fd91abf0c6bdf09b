/* trainer.c - see trainer.h. Batches are drawn with a seeded splitmix64
 * generator so a run is reproducible from --seed; its state is part of the
 * snapshot (train_ckpt.h), so a resumed run draws the same batches. */
#include "trainer.h"
#include "train_ckpt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void nawal_train_config_default(nawal_train_config *c) {
    c->batch = 12;
    c->steps = 2000;
    c->warmup = 100;
    c->lr = 1e-3f;
    c->min_lr = 1e-4f;
    c->weight_decay = 0.1f;
    c->beta1 = 0.9f;
    c->beta2 = 0.99f;
    c->eps = 1e-8f;
    c->grad_clip = 1.0f;
    c->seed = 1337;
    c->log_every = 100;
    c->ckpt = NULL;
}

uint64_t nawal_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double nawal_monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int nawal_train_run(nawal_gpt *m, const int32_t *train, size_t n_train, const nawal_train_config *tc,
                    FILE *log, nawal_train_result *res, char *err, size_t errlen) {
    int B = tc->batch, T = m->cfg.n_ctx;
    if (B < 1 || B > m->max_batch) { snprintf(err, errlen, "batch %d outside [1,%d]", B, m->max_batch); return -1; }
    if (n_train < (size_t)T + 1) {
        snprintf(err, errlen, "training split has %zu tokens, fewer than one window of %d+1", n_train, T);
        return -1;
    }
    memset(res, 0, sizeof *res);
    nawal_train_state st = { .kind = NAWAL_TRAIN_PLAIN, .steps = tc->steps, .seed = tc->seed,
                             .rng = tc->seed ^ 0x6E6177616C00ull };
    uint8_t id[32];
    int resumed = nawal_train_ckpt_begin(tc, m, train, n_train, NULL, 0, &st, id, log, err, errlen);
    if (resumed < 0) return -1;
    double ck_last = nawal_monotonic_s();
    int32_t *in = malloc((size_t)B * T * sizeof(int32_t)), *tg = malloc((size_t)B * T * sizeof(int32_t));
    if (!in || !tg) { free(in); free(tg); snprintf(err, errlen, "out of memory"); return -1; }
    nawal_adamw_config ac = { tc->beta1, tc->beta2, tc->eps, tc->weight_decay };
    size_t span = n_train - (size_t)T; /* start in [0, span) */
    res->start_step = st.step;
    res->first_loss = st.first_loss;
    res->last_loss = st.last_loss;
    double t0 = nawal_monotonic_s(), tlog = t0;
    int rc = 0, logged = st.step;
    for (int step = st.step; step < tc->steps; step++) {
        for (int b = 0; b < B; b++) {
            size_t s = (size_t)(nawal_splitmix64(&st.rng) % span);
            memcpy(in + (size_t)b * T, train + s, (size_t)T * sizeof(int32_t));
            memcpy(tg + (size_t)b * T, train + s + 1, (size_t)T * sizeof(int32_t));
        }
        float lr = nawal_lr_schedule(step, tc->warmup, tc->steps, tc->lr, tc->min_lr);
        nawal_gpt_zero_grad(m);
        float loss = nawal_gpt_forward_backward(m, in, tg, B, T, NULL, err, errlen);
        if (isnan(loss)) { rc = -1; break; }
        float norm = nawal_gpt_clip_grad_norm(m, tc->grad_clip);
        if (nawal_gpt_adamw_step(m, &ac, lr)) { snprintf(err, errlen, "out of memory for optimizer state"); rc = -1; break; }
        if (step == 0) res->first_loss = loss;
        res->last_loss = loss;
        if (!isfinite(loss) || !isfinite(norm)) {
            snprintf(err, errlen, "training diverged at step %d (loss %g, grad norm %g)", step, loss, norm);
            rc = -1;
            break;
        }
        if (log && tc->log_every > 0 && ((step + 1) % tc->log_every == 0 || step == res->start_step || step + 1 == tc->steps)) {
            double t = nawal_monotonic_s();
            fprintf(log, "step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tokens/s\n", step + 1, tc->steps,
                    loss, lr, norm, (double)(step + 1 - logged) * B * T / (t - tlog));
            fflush(log);
            tlog = t;
            logged = step + 1;
        }
        st.step = step + 1;
        st.first_loss = res->first_loss;
        st.last_loss = loss;
        nawal_train_ckpt_step(tc, m, &st, id, &ck_last, log);
    }
    m->ops->sync(m->ops);
    res->seconds = nawal_monotonic_s() - t0;
    res->tokens_per_s = res->seconds > 0 ? (double)(tc->steps - res->start_step) * B * T / res->seconds : 0.0;
    free(in);
    free(tg);
    return rc;
}

int nawal_eval_tokens(nawal_gpt *m, const int32_t *toks, size_t n, double *loss, size_t *n_predicted,
                      char *err, size_t errlen) {
    int T = m->cfg.n_ctx, B = m->max_batch;
    if (n < 2) { snprintf(err, errlen, "need at least 2 tokens to evaluate, got %zu", n); return -1; }
    size_t n_windows = (n - 1 + (size_t)T - 1) / (size_t)T;
    int32_t *in = malloc((size_t)B * T * sizeof(int32_t)), *tg = malloc((size_t)B * T * sizeof(int32_t));
    if (!in || !tg) { free(in); free(tg); snprintf(err, errlen, "out of memory"); return -1; }
    double sum = 0.0;
    size_t count = 0;
    int rc = 0;
    for (size_t w0 = 0; w0 < n_windows; w0 += (size_t)B) {
        int nb = (int)(n_windows - w0 < (size_t)B ? n_windows - w0 : (size_t)B);
        for (int b = 0; b < nb; b++) {
            size_t base = (w0 + (size_t)b) * (size_t)T;
            for (int t = 0; t < T; t++) {
                size_t i = base + (size_t)t;
                int has = i + 1 < n;
                in[b * T + t] = has ? toks[i] : 0;
                tg[b * T + t] = has ? toks[i + 1] : -1;
            }
        }
        size_t nv;
        float l = nawal_gpt_forward(m, in, tg, nb, T, 0, &nv, err, errlen);
        if (isnan(l)) { rc = -1; break; }
        sum += (double)l * (double)nv;
        count += nv;
    }
    free(in);
    free(tg);
    if (rc) return rc;
    *loss = sum / (double)count;
    if (n_predicted) *n_predicted = count;
    return 0;
}
