/* ticker.h - the round machine's worker thread for `serve`: it owns a
 * second connection to the coordinator directory and runs
 * nawal_round_resume (first request) and nawal_round_tick (later ones),
 * which may aggregate for seconds, while the event loop keeps serving. The
 * loop asks for ticks (at the time the last report named, and after joins
 * and updates); requests made while a tick runs coalesce into one more
 * tick. After each tick the worker leaves its report in a one-slot mailbox
 * (the latest wins: the loop reads the rounds' state from the database
 * anyway) and calls notify (e.g. nawal_ws_server_wake) so the loop wakes. */
#ifndef NAWAL_TICKER_H
#define NAWAL_TICKER_H

#include "aggregate.h"

#include <stddef.h>
#include <stdint.h>

typedef struct nawal_ticker nawal_ticker;

typedef struct {
    int ok;                 /* 0: the tick failed (error says why; nothing was lost, tick again later) */
    int64_t next_event_ms;  /* tick again at this time at the latest (0: nothing pending) */
    int transitions;        /* state changes the tick made */
    char error[256];
} nawal_ticker_report;

/* Opens dir a second time and starts the thread. cfg's strategy string is copied. */
int nawal_ticker_start(nawal_ticker **out, const char *dir, const nawal_agg_config *cfg, void (*notify)(void *),
                       void *notify_ctx, char *err, size_t errlen);
/* Any thread: a tick as soon as the worker is free. */
void nawal_ticker_request(nawal_ticker *t);
/* 1 and *rep when a report arrived since the last call, else 0. */
int nawal_ticker_poll(nawal_ticker *t, nawal_ticker_report *rep);
/* Waits for a tick in progress, stops the thread, closes its connection. NULL is fine. */
void nawal_ticker_stop(nawal_ticker *t);

#endif
