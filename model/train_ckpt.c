/* train_ckpt.c - see train_ckpt.h. */
#include "train_ckpt.h"
#include "error.h"

static void notify(const nawal_train_ckpt *ck, FILE *log, nawal_ckpt_event ev, int step, int steps, const char *why) {
    if (ck->notify) {
        ck->notify(ck->ctx, ev, step, steps, why);
    } else if (log && ev == NAWAL_CKPT_RESUMED) {
        fprintf(log, "resuming at step %d of %d from the checkpoint %s\n", step, steps, ck->path);
        fflush(log);
    } else if (log && ev == NAWAL_CKPT_REFUSED) {
        fprintf(log, "%s; training from step 0\n", why);
        fflush(log);
    } else if (ev == NAWAL_CKPT_FAILED) {
        FILE *out = log ? log : stderr;
        fprintf(out, "warning: no checkpoint at step %d of %d: %s; training goes on\n", step, steps, why);
        fflush(out);
    }
}

int nawal_train_ckpt_begin(const nawal_train_config *tc, nawal_gpt *m, const int32_t *train, size_t n_train,
                           const void *extra, size_t extra_len, nawal_train_state *st, uint8_t id[32], FILE *log,
                           char *err, size_t errlen) {
    const nawal_train_ckpt *ck = tc->ckpt;
    if (!ck || (!ck->resume && ck->every <= 0)) return 0;
    if (!ck->path) return nawal_fail(err, errlen, "checkpoints asked for without a path");
    if (nawal_train_state_id(id, m, train, n_train, tc, st->kind, extra, extra_len))
        return nawal_fail(err, errlen, "cannot hash the training run's identity");
    if (!ck->resume) return 0;
    char why[512] = "";
    int r = nawal_train_state_load(ck->path, m, st, id, why, sizeof why);
    if (r == 1) notify(ck, log, NAWAL_CKPT_RESUMED, st->step, st->steps, NULL);
    else if (r < 0) notify(ck, log, NAWAL_CKPT_REFUSED, 0, st->steps, why);
    return r == 1;
}

void nawal_train_ckpt_step(const nawal_train_config *tc, const nawal_gpt *m, const nawal_train_state *st,
                           const uint8_t id[32], double *last_s, FILE *log) {
    const nawal_train_ckpt *ck = tc->ckpt;
    if (!ck || ck->every <= 0 || (st->step % ck->every != 0 && st->step != st->steps)) return;
    double now = nawal_monotonic_s();
    if (ck->min_interval_s > 0 && now - *last_s < ck->min_interval_s) return;
    *last_s = now;
    char why[512] = "";
    if (nawal_train_state_save(ck->path, m, st, id, why, sizeof why)) /* (nawal_file_replace removed its temporary file) */
        notify(ck, log, NAWAL_CKPT_FAILED, st->step, st->steps, why);
    else
        notify(ck, log, NAWAL_CKPT_SAVED, st->step, st->steps, NULL);
}
