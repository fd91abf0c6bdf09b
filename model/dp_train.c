/* dp_train.c - see dp_train.h. Example k of the train split is the window
 * inputs train[kT, kT+T), targets shifted by one, k < (n_train - 1) / T.
 * Every step draws each example independently with probability q (Poisson
 * sampling: the batch size varies and may be 0 — an empty step still adds
 * noise and is accounted), runs the selected examples in micro-batches of
 * at most m->max_batch, then noises and averages the clipped sum over the
 * expected batch q * n_examples.
 *
 * Noise: step s adds Philox stream s of the run's key (nawal_gpt_dp_finish),
 * so no two steps of a run share noise. A resumed run (train_ckpt.h) in
 * production draws a new key and a new sampling state from the CSPRNG, so
 * the steps it executes again after a crash get fresh noise, never the
 * crashed attempt's; a seeded run (tests) continues its streams from the
 * snapshot, so a step executed again is the same computation with the same
 * data and the same noise, bit for bit. */
#include "dp_train.h"
#include "accountant.h"
#include "cid.h"
#include "dp.h"
#include "train_ckpt.h"
#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

int nawal_dp_train_plan(const nawal_gpt *m, size_t n_train, const nawal_train_config *tc,
                        const nawal_dp_train_config *dc, nawal_dp_report *rep, char *err, size_t errlen) {
    int T = m->cfg.n_ctx;
    memset(rep, 0, sizeof *rep);
    if (n_train < (size_t)T + 1) {
        snprintf(err, errlen, "training split has %zu tokens, fewer than one window of %d+1", n_train, T);
        return -1;
    }
    if (!(dc->max_grad_norm > 0.0f)) { snprintf(err, errlen, "--max-grad-norm must be > 0"); return -1; }
    if (!(dc->delta > 0.0 && dc->delta < 1.0)) { snprintf(err, errlen, "--delta must be in (0, 1), got %g", dc->delta); return -1; }
    rep->n_examples = (n_train - 1) / (size_t)T;
    double q = dc->sample_rate > 0.0 ? dc->sample_rate : (double)tc->batch / (double)rep->n_examples;
    if (!(q > 0.0 && q <= 1.0)) {
        snprintf(err, errlen, "sampling rate %g outside (0, 1] (batch %d of %zu examples)", q, tc->batch, rep->n_examples);
        return -1;
    }
    rep->sample_rate = q;
    rep->expected_batch = q * (double)rep->n_examples;
    if (dc->noise_multiplier > 0.0) {
        rep->noise_multiplier = dc->noise_multiplier;
    } else {
        if (!(dc->epsilon > 0.0)) { snprintf(err, errlen, "DP training needs --epsilon or --noise-multiplier"); return -1; }
        if (nawal_noise_multiplier_for_epsilon(dc->epsilon, q, (uint64_t)tc->steps, dc->delta, 1e-4 * dc->epsilon,
                                               &rep->noise_multiplier, NULL, err, errlen))
            return -1;
    }
    return 0;
}

int nawal_dp_train_run(nawal_gpt *m, const int32_t *train, size_t n_train, const nawal_train_config *tc,
                       const nawal_dp_train_config *dc, FILE *log, nawal_train_result *res, nawal_dp_report *rep,
                       char *err, size_t errlen) {
    if (nawal_dp_train_plan(m, n_train, tc, dc, rep, err, errlen)) return -1;
    if (nawal_crypto_init()) { snprintf(err, errlen, "libsodium failed to initialise"); return -1; }
    int T = m->cfg.n_ctx, MB = m->max_batch;
    double q = rep->sample_rate, sigma = rep->noise_multiplier;
    size_t n_ex = rep->n_examples;
    nawal_accountant acc;
    if (!dc->budget && nawal_accountant_init(&acc, NULL, 0, err, errlen)) return -1;
    /* the run's random streams: seeded from tc->seed (tests), else from the CSPRNG */
    nawal_train_state st = { .kind = NAWAL_TRAIN_DP, .steps = tc->steps, .seed = tc->seed, .has_noise_key = dc->seeded };
    uint64_t rng = tc->seed ^ 0x64705F73616D70ull, key = 0;
    if (dc->seeded) {
        uint64_t ks = tc->seed ^ 0x64705F6E6F697365ull;
        key = nawal_splitmix64(&ks);
    }
    double ident[] = { q, sigma, dc->max_grad_norm, dc->epsilon, dc->delta, dc->seeded, dc->budget != NULL };
    uint8_t id[32];
    int resumed = nawal_train_ckpt_begin(tc, m, train, n_train, ident, sizeof ident, &st, id, log, err, errlen);
    if (resumed < 0) return -1;
    double ck_last = nawal_monotonic_s();
    if (resumed && dc->seeded) {
        rng = st.rng;
        key = st.noise_key;
    }
    if (!dc->seeded) { /* fresh streams, also on a resume: noise never drawn twice from one (key, step) */
        randombytes_buf(&key, sizeof key);
        randombytes_buf(&rng, sizeof rng);
    }
    rep->steps_done = st.step;
    /* with a budget, its total: it also holds the steps a killed run executed after its last snapshot */
    if (!dc->budget) rep->epsilon_spent = st.epsilon_spent;
    else if (nawal_privacy_budget_epsilon(dc->budget, &rep->epsilon_spent, NULL, err, errlen)) return -1;
    if (resumed && !dc->budget) { /* this run's accountant: the snapshot's steps, one by one as the loop adds them */
        nawal_accountant one;
        if (nawal_accountant_init(&one, NULL, 0, err, errlen) || nawal_accountant_add(&one, q, sigma, 1, err, errlen)) return -1;
        for (int i = 0; i < st.step; i++)
            if (nawal_accountant_compose(&acc, &one, err, errlen)) return -1;
    } /* (a budget has them on record) */
    int32_t *in = malloc((size_t)MB * T * sizeof(int32_t)), *tg = malloc((size_t)MB * T * sizeof(int32_t));
    size_t *sel = malloc((n_ex ? n_ex : 1) * sizeof(size_t));
    if (!in || !tg || !sel) { free(in); free(tg); free(sel); snprintf(err, errlen, "out of memory"); return -1; }
    nawal_adamw_config ac = { tc->beta1, tc->beta2, tc->eps, tc->weight_decay };
    memset(res, 0, sizeof *res);
    res->start_step = st.step;
    res->first_loss = st.first_loss;
    res->last_loss = st.last_loss;
    double t0 = nawal_monotonic_s(), tlog = t0, tokens = 0.0, tokens_log = 0.0;
    int rc = 0;
    for (int step = st.step; step < tc->steps; step++) {
        double eps_after;
        if (dc->budget) {
            int exceeds = 0;
            if (nawal_privacy_budget_would_exceed(dc->budget, q, sigma, 1, dc->epsilon > 0 ? dc->epsilon : INFINITY,
                                                  &eps_after, &exceeds, err, errlen)) { rc = -1; break; }
        } else if (nawal_accountant_epsilon_after(&acc, q, sigma, 1, dc->delta, &eps_after, NULL, err, errlen)) {
            rc = -1;
            break;
        }
        if (dc->epsilon > 0 && eps_after > dc->epsilon) {
            rep->stopped_by_budget = 1;
            if (log) fprintf(log, "stopping before step %d: it would spend epsilon %.4f > --epsilon %g (delta %g)\n",
                             step + 1, eps_after, dc->epsilon, dc->delta);
            break;
        }
        /* Poisson sampling: every example independently with probability q */
        size_t n_sel = 0;
        for (size_t k = 0; k < n_ex; k++) {
            uint64_t r = nawal_splitmix64(&rng);
            if ((double)(r >> 11) * (1.0 / 9007199254740992.0) < q) sel[n_sel++] = k;
        }
        if (!dc->seeded && (step & 63) == 63) randombytes_buf(&rng, sizeof rng); /* reseed from the CSPRNG */
        float lr = nawal_lr_schedule(step, tc->warmup, tc->steps, tc->lr, tc->min_lr);
        nawal_gpt_zero_grad(m);
        double loss_sum = 0.0;
        for (size_t s0 = 0; s0 < n_sel; s0 += (size_t)MB) {
            int B = (int)(n_sel - s0 < (size_t)MB ? n_sel - s0 : (size_t)MB);
            for (int b = 0; b < B; b++) {
                const int32_t *w = train + sel[s0 + (size_t)b] * (size_t)T;
                memcpy(in + (size_t)b * T, w, (size_t)T * sizeof(int32_t));
                memcpy(tg + (size_t)b * T, w + 1, (size_t)T * sizeof(int32_t));
            }
            float loss;
            if (nawal_gpt_dp_accumulate(m, in, tg, B, T, dc->max_grad_norm, NULL, &loss, err, errlen)) { rc = -1; break; }
            loss_sum += (double)loss * B;
        }
        if (rc) break;
        nawal_gpt_dp_finish(m, (float)(sigma * dc->max_grad_norm), rep->expected_batch, key, (uint64_t)step);
        if (nawal_gpt_adamw_step(m, &ac, lr)) { snprintf(err, errlen, "out of memory for optimizer state"); rc = -1; break; }
        /* the step touched data: charge it before anything else happens */
        if (dc->budget) {
            if (nawal_privacy_budget_record(dc->budget, q, sigma, 1, err, errlen)) { rc = -1; break; }
        } else if (nawal_accountant_add(&acc, q, sigma, 1, err, errlen)) { rc = -1; break; }
        rep->epsilon_spent = eps_after;
        rep->steps_done = step + 1;
        float loss = n_sel ? (float)(loss_sum / (double)n_sel) : NAN;
        if (step == 0) res->first_loss = loss;
        res->last_loss = loss;
        tokens += (double)n_sel * T;
        tokens_log += (double)n_sel * T;
        if (log && tc->log_every > 0 && ((step + 1) % tc->log_every == 0 || step == res->start_step || step + 1 == tc->steps)) {
            double t = nawal_monotonic_s();
            fprintf(log, "step %5d/%d  loss %.4f  batch %zu  lr %.2e  epsilon %.4f  %.0f tokens/s\n", step + 1, tc->steps,
                    loss, n_sel, lr, eps_after, tokens_log / (t - tlog));
            fflush(log);
            tlog = t;
            tokens_log = 0.0;
        }
        /* the snapshot: charged steps only; an unseeded run's streams are not written (it draws fresh ones on resume) */
        st.step = step + 1;
        st.rng = dc->seeded ? rng : 0;
        st.noise_key = dc->seeded ? key : 0;
        st.first_loss = res->first_loss;
        st.last_loss = loss;
        st.epsilon_spent = eps_after;
        nawal_train_ckpt_step(tc, m, &st, id, &ck_last, log);
    }
    m->ops->sync(m->ops);
    res->seconds = nawal_monotonic_s() - t0;
    res->tokens_per_s = res->seconds > 0 ? tokens / res->seconds : 0.0;
    free(in);
    free(tg);
    free(sel);
    return rc;
}
