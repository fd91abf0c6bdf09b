/* metrics.h - the coordinator's Prometheus metrics: a small registry of
 * counters and gauges, optionally split by one label set each sample, and
 * their rendering in the Prometheus text exposition format (version 0.0.4)
 * served at GET /metrics. Single-threaded, like the coordinator's event
 * loop. */
#ifndef NAWAL_COORD_METRICS_H
#define NAWAL_COORD_METRICS_H

#include <stddef.h>

typedef enum { NAWAL_METRIC_COUNTER, NAWAL_METRIC_GAUGE } nawal_metric_type;

typedef struct nawal_metrics nawal_metrics;

nawal_metrics *nawal_metrics_new(void);
void nawal_metrics_free(nawal_metrics *m);

/* Registers a metric; name must match [a-zA-Z_:][a-zA-Z0-9_:]* (counters
 * should end in _total). Returns its id, or -1 for a bad or duplicate name. */
int nawal_metric_define(nawal_metrics *m, const char *name, nawal_metric_type type, const char *help);

/* Sample selectors: labels is NULL (no labels) or a NULL-terminated list
 * key, value, key, value, ..., NULL; values are escaped when rendered.
 * Returns 0, or -1 for an unknown id, a bad label name, or a decrease of a
 * counter. */
int nawal_metric_add(nawal_metrics *m, int id, const char *const *labels, double v);
int nawal_metric_set(nawal_metrics *m, int id, const char *const *labels, double v);
/* Current value of a sample (0 if never set). */
double nawal_metric_get(const nawal_metrics *m, int id, const char *const *labels);

/* The exposition text (malloc'd, NUL-terminated; *len without the NUL). */
char *nawal_metrics_render(const nawal_metrics *m, size_t *len);

#endif
