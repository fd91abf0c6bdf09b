/* metrics.c - see metrics.h. Samples are kept per metric in insertion order
 * with their label set pre-rendered ({k="v",...}), so rendering is a walk. */
#include "metrics.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *labels;   /* rendered "{k=\"v\"}" or "" */
    double value;
} sample;

typedef struct {
    char *name, *help;
    nawal_metric_type type;
    sample *samples;
    size_t n, cap;
} metric;

struct nawal_metrics {
    metric *v;
    size_t n, cap;
};

nawal_metrics *nawal_metrics_new(void) { return calloc(1, sizeof(nawal_metrics)); }

void nawal_metrics_free(nawal_metrics *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) {
        for (size_t j = 0; j < m->v[i].n; j++) free(m->v[i].samples[j].labels);
        free(m->v[i].samples);
        free(m->v[i].name);
        free(m->v[i].help);
    }
    free(m->v);
    free(m);
}

static int valid_name(const char *s, int allow_colon) {
    if (!s || !*s || (*s >= '0' && *s <= '9')) return 0;
    for (; *s; s++) {
        int ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
                 (allow_colon && *s == ':');
        if (!ok) return 0;
    }
    return 1;
}

int nawal_metric_define(nawal_metrics *m, const char *name, nawal_metric_type type, const char *help) {
    if (!valid_name(name, 1)) return -1;
    for (size_t i = 0; i < m->n; i++) if (strcmp(m->v[i].name, name) == 0) return -1;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        metric *v = realloc(m->v, cap * sizeof *v);
        if (!v) return -1;
        m->v = v;
        m->cap = cap;
    }
    metric *x = &m->v[m->n];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    x->help = strdup(help ? help : "");
    x->type = type;
    if (!x->name || !x->help) { free(x->name); free(x->help); return -1; }
    return (int)m->n++;
}

/* Renders a label list as {k="v",...} with the format's escapes (\\ \" \n). */
static char *render_labels(const char *const *labels) {
    if (!labels || !labels[0]) return strdup("");
    size_t cap = 3;
    for (size_t i = 0; labels[i]; i += 2) {
        if (!labels[i + 1] || !valid_name(labels[i], 0) || strncmp(labels[i], "__", 2) == 0) return NULL;
        cap += strlen(labels[i]) + 2 * strlen(labels[i + 1]) + 4;
    }
    char *s = malloc(cap), *o = s;
    if (!s) return NULL;
    *o++ = '{';
    for (size_t i = 0; labels[i]; i += 2) {
        if (i) *o++ = ',';
        o += sprintf(o, "%s=\"", labels[i]);
        for (const char *p = labels[i + 1]; *p; p++) {
            if (*p == '\\' || *p == '"') { *o++ = '\\'; *o++ = *p; }
            else if (*p == '\n') { *o++ = '\\'; *o++ = 'n'; }
            else *o++ = *p;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    return s;
}

static sample *find_sample(metric *x, const char *const *labels, int create) {
    char *key = render_labels(labels);
    if (!key) return NULL;
    for (size_t j = 0; j < x->n; j++)
        if (strcmp(x->samples[j].labels, key) == 0) { free(key); return &x->samples[j]; }
    if (!create) { free(key); return NULL; }
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 4;
        sample *v = realloc(x->samples, cap * sizeof *v);
        if (!v) { free(key); return NULL; }
        x->samples = v;
        x->cap = cap;
    }
    x->samples[x->n] = (sample){ key, 0.0 };
    return &x->samples[x->n++];
}

int nawal_metric_add(nawal_metrics *m, int id, const char *const *labels, double v) {
    if (id < 0 || (size_t)id >= m->n || isnan(v)) return -1;
    if (m->v[id].type == NAWAL_METRIC_COUNTER && v < 0) return -1;
    sample *s = find_sample(&m->v[id], labels, 1);
    if (!s) return -1;
    s->value += v;
    return 0;
}

int nawal_metric_set(nawal_metrics *m, int id, const char *const *labels, double v) {
    if (id < 0 || (size_t)id >= m->n || isnan(v)) return -1;
    sample *s = find_sample(&m->v[id], labels, 1);
    if (!s) return -1;
    if (m->v[id].type == NAWAL_METRIC_COUNTER && v < s->value) return -1;
    s->value = v;
    return 0;
}

double nawal_metric_get(const nawal_metrics *m, int id, const char *const *labels) {
    if (id < 0 || (size_t)id >= m->n) return 0.0;
    sample *s = find_sample(&m->v[id], labels, 0);
    return s ? s->value : 0.0;
}

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return -1;
        if ((size_t)n < *cap - *len) { *len += (size_t)n; return 0; }
        size_t nc = (*cap + (size_t)n) * 2;
        char *b = realloc(*buf, nc);
        if (!b) return -1;
        *buf = b;
        *cap = nc;
    }
}

char *nawal_metrics_render(const nawal_metrics *m, size_t *len) {
    size_t cap = 1024, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    buf[0] = '\0';
    for (size_t i = 0; i < m->n; i++) {
        const metric *x = &m->v[i];
        if (appendf(&buf, &n, &cap, "# HELP %s ", x->name)) goto oom;
        for (const char *p = x->help; *p; p++) {   /* HELP escapes: \\ and \n */
            const char *piece = *p == '\\' ? "\\\\" : *p == '\n' ? "\\n" : NULL;
            int rc = piece ? appendf(&buf, &n, &cap, "%s", piece) : appendf(&buf, &n, &cap, "%c", *p);
            if (rc) goto oom;
        }
        if (appendf(&buf, &n, &cap, "\n# TYPE %s %s\n", x->name, x->type == NAWAL_METRIC_COUNTER ? "counter" : "gauge")) goto oom;
        if (x->n == 0 && appendf(&buf, &n, &cap, "%s 0\n", x->name)) goto oom;
        for (size_t j = 0; j < x->n; j++) {
            double v = x->samples[j].value;
            int rc = isinf(v) ? appendf(&buf, &n, &cap, "%s%s %s\n", x->name, x->samples[j].labels, v > 0 ? "+Inf" : "-Inf")
                              : appendf(&buf, &n, &cap, "%s%s %.17g\n", x->name, x->samples[j].labels, v);
            if (rc) goto oom;
        }
    }
    if (len) *len = n;
    return buf;
oom:
    free(buf);
    return NULL;
}
