/* ticker.c - the round machine's worker thread (see ticker.h). */
#include "ticker.h"

#include "error.h"
#include "log.h"
#include "rounds.h"
#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct nawal_ticker {
    nawal_store *store;          /* the worker's own connection */
    char strategy[64];
    nawal_agg_config cfg;
    void (*notify)(void *);
    void *notify_ctx;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int requested, stop, resumed; /* under mu (resumed: worker only) */
    int has_report;
    nawal_ticker_report report;
};

static void *ticker_main(void *arg) {
    nawal_ticker *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->stop && !t->requested) pthread_cond_wait(&t->cv, &t->mu);
        if (t->stop) break;
        t->requested = 0;
        pthread_mutex_unlock(&t->mu);

        nawal_tick_report tr;
        nawal_ticker_report rep = { 0 };
        int64_t now = (int64_t)nawal_now_ms();
        int rc = t->resumed ? nawal_round_tick(t->store, now, &t->cfg, &tr, rep.error, sizeof rep.error)
                            : nawal_round_resume(t->store, now, &t->cfg, &tr, rep.error, sizeof rep.error);
        t->resumed = 1;
        rep.ok = rc == 0;
        if (rc == 0) {
            rep.next_event_ms = tr.next_event_ms;
            rep.transitions = tr.transitions;
        } else {
            char q[300];
            nawal_log(NAWAL_LOG_ERROR, "tick_failed", "error=%s", nawal_log_quote(q, sizeof q, rep.error));
        }

        pthread_mutex_lock(&t->mu);
        t->report = rep;
        t->has_report = 1;
        if (t->notify) t->notify(t->notify_ctx);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int nawal_ticker_start(nawal_ticker **out, const char *dir, const nawal_agg_config *cfg, void (*notify)(void *),
                       void *notify_ctx, char *err, size_t errlen) {
    *out = NULL;
    nawal_ticker *t = calloc(1, sizeof *t);
    if (!t) return nawal_fail(err, errlen, "out of memory");
    if (nawal_store_open(&t->store, dir, 0, err, errlen)) {
        free(t);
        return -1;
    }
    if (cfg) t->cfg = *cfg;
    snprintf(t->strategy, sizeof t->strategy, "%s", cfg && cfg->strategy ? cfg->strategy : "fedavg");
    t->cfg.strategy = t->strategy;
    t->notify = notify;
    t->notify_ctx = notify_ctx;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (pthread_create(&t->th, NULL, ticker_main, t)) {
        nawal_store_close(t->store);
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t);
        return nawal_fail(err, errlen, "cannot start the round machine's thread");
    }
    *out = t;
    return 0;
}

void nawal_ticker_request(nawal_ticker *t) {
    pthread_mutex_lock(&t->mu);
    t->requested = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

int nawal_ticker_poll(nawal_ticker *t, nawal_ticker_report *rep) {
    pthread_mutex_lock(&t->mu);
    int have = t->has_report;
    if (have) *rep = t->report;
    t->has_report = 0;
    pthread_mutex_unlock(&t->mu);
    return have;
}

void nawal_ticker_stop(nawal_ticker *t) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->th, NULL);
    nawal_store_close(t->store);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}
