/* serve_metrics.c - the metric set of `serve` (see serve_metrics.h). */
#include "serve_metrics.h"

#include "envelope.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define DEF(field, name, type, help)                                   \
    do {                                                               \
        if ((m->field = nawal_metric_define(m->reg, name, type, help)) < 0) goto fail; \
    } while (0)

int nawal_serve_metrics_init(nawal_serve_metrics *m) {
    memset(m, 0, sizeof *m);
    m->reg = nawal_metrics_new();
    if (!m->reg) return -1;
    const nawal_metric_type G = NAWAL_METRIC_GAUGE, C = NAWAL_METRIC_COUNTER;
    DEF(start_time, "nawal_process_start_time_seconds", G, "Unix time the serve process started");
    DEF(connections, "nawal_connections", G, "Open WebSocket connections");
    DEF(sessions, "nawal_sessions_authenticated", G, "Connections whose validator has authenticated");
    DEF(validators, "nawal_validators_registered", G, "Registered, not removed validator keys");
    DEF(round_id, "nawal_round_id", G, "Id of the current (latest) round; 0 before the first");
    DEF(round_state, "nawal_round_state", G, "1 for the current round's state, 0 for the others");
    DEF(participants, "nawal_round_participants", G, "Validators joined in the current round");
    DEF(updates, "nawal_round_updates", G, "Updates received in the current round");
    DEF(target, "nawal_round_target_participants", G, "Participants the current round wants");
    DEF(model_bytes, "nawal_model_bytes", G, "Size of the current round's base model, bytes");
    DEF(round_duration, "nawal_last_round_duration_seconds", G, "Announcement to end of the last round that ended");
    DEF(aggregation_seconds, "nawal_last_aggregation_seconds", G, "Time the last aggregation took");
    DEF(epsilon_max, "nawal_round_epsilon_reported_max", G,
        "Largest privacy budget (epsilon) spent reported by an update accepted in the current round");
    DEF(fed_val_round, "nawal_federated_val_round", G,
        "Latest closed round, whose new model the validators evaluate; 0 before the first");
    DEF(fed_val_loss, "nawal_federated_val_loss", G,
        "Token-weighted mean loss the validators reported for the latest closed round's model on their own "
        "validation data (0 while nawal_federated_val_results is 0)");
    DEF(fed_val_results, "nawal_federated_val_results", G, "Evaluation results recorded for the latest closed round");
    DEF(bytes_in, "nawal_received_bytes_total", C, "WebSocket message bytes received");
    DEF(bytes_out, "nawal_sent_bytes_total", C, "bytes sent: WebSocket messages queued, model blobs written as HTTP bodies");
    DEF(messages_in, "nawal_messages_received_total", C, "Envelopes received and accepted, by message type");
    DEF(errors_sent, "nawal_errors_sent_total", C, "Error messages sent, by error code");
    DEF(updates_accepted, "nawal_updates_accepted_total", C, "Updates accepted (committed) from agents");
    DEF(updates_rejected, "nawal_updates_rejected_total", C, "Updates refused or dropped, by reason");
    DEF(rounds_closed, "nawal_rounds_closed_total", C, "Rounds closed with a new model");
    DEF(rounds_failed, "nawal_rounds_failed_total", C, "Rounds that failed (too few joins, updates or usable updates)");
    DEF(blob_gets, "nawal_blob_http_requests_total", C, "GET /blobs requests (agents' model downloads), by HTTP status");
    return 0;
fail:
    nawal_metrics_free(m->reg);
    m->reg = NULL;
    return -1;
}

void nawal_serve_metrics_free(nawal_serve_metrics *m) {
    nawal_metrics_free(m->reg);
    m->reg = NULL;
}

void nawal_serve_metrics_error(nawal_serve_metrics *m, int code) {
    const char *name = nawal_error_code_name(code);
    const char *lab[] = { "code", name ? name : "ERR_UNSPECIFIED", NULL };
    nawal_metric_add(m->reg, m->errors_sent, lab, 1);
}

void nawal_serve_metrics_blob_get(nawal_serve_metrics *m, int status) {
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    const char *lab[] = { "status", st, NULL };
    nawal_metric_add(m->reg, m->blob_gets, lab, 1);
}

void nawal_serve_metrics_rejected(nawal_serve_metrics *m, const char *reason, double n) {
    const char *lab[] = { "reason", reason, NULL };
    nawal_metric_add(m->reg, m->updates_rejected, lab, n);
}

void nawal_serve_metrics_rejected_code(nawal_serve_metrics *m, int code) {
    const char *name = nawal_error_code_name(code);
    char reason[48];
    snprintf(reason, sizeof reason, "%s", name && !strncmp(name, "ERR_", 4) ? name + 4 : "unspecified");
    for (char *p = reason; *p; p++) *p = (char)tolower((unsigned char)*p);
    nawal_serve_metrics_rejected(m, reason, 1);
}

void nawal_serve_metrics_message(nawal_serve_metrics *m, unsigned type) {
    const char *name = nawal_msg_type_name(type);
    const char *lab[] = { "type", name ? name : "MSG_UNSPECIFIED", NULL };
    nawal_metric_add(m->reg, m->messages_in, lab, 1);
}
