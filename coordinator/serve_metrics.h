/* serve_metrics.h - the live metrics of `nawal-coordinator serve`: which
 * metrics exist (names and help, defined once in serve_metrics.c on the
 * registry of metrics.h) and the handful of updates the session code makes.
 * Gauges that describe the database (round, participants, model size, last
 * round's duration and aggregation time, the validators' evaluations of
 * the latest closed round's model) are refreshed from it when
 * GET /metrics is served (http.c); counters count since the process
 * started, as Prometheus expects. Event loop thread only. */
#ifndef NAWAL_SERVE_METRICS_H
#define NAWAL_SERVE_METRICS_H

#include "metrics.h"

#include <stddef.h>

typedef struct {
    nawal_metrics *reg;
    /* gauges */
    int connections, sessions, start_time;
    int round_id, round_state, participants, updates, target;
    int model_bytes, round_duration, aggregation_seconds, epsilon_max, validators;
    int fed_val_round, fed_val_loss, fed_val_results;
    /* counters */
    int bytes_in, bytes_out, messages_in, errors_sent;
    int updates_accepted, updates_rejected, rounds_closed, rounds_failed;
    int blob_gets;
} nawal_serve_metrics;

int nawal_serve_metrics_init(nawal_serve_metrics *m);
void nawal_serve_metrics_free(nawal_serve_metrics *m);

/* One Error sent with this code (label code="ERR_LATE", ...). */
void nawal_serve_metrics_error(nawal_serve_metrics *m, int code);
/* One update refused: reason is the error code's name without "ERR_",
 * lowercased ("duplicate", "wrong_round", ...), or a word of ours
 * ("aggregation" for updates the aggregation dropped, "bad_blob"). */
void nawal_serve_metrics_rejected(nawal_serve_metrics *m, const char *reason, double n);
void nawal_serve_metrics_rejected_code(nawal_serve_metrics *m, int code);
/* One GET /blobs answered with this HTTP status (label status="200", "401", ...). */
void nawal_serve_metrics_blob_get(nawal_serve_metrics *m, int status);
/* One accepted envelope of this MsgType (label type="MSG_JOIN", ...). */
void nawal_serve_metrics_message(nawal_serve_metrics *m, unsigned type);

#endif
