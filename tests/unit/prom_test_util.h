/* prom_test_util.h - an independent strict parser of the Prometheus text
 * exposition format 0.0.4, for the tests that check what the coordinator
 * serves at /metrics (test_coord_metrics.c: the renderer on random input;
 * test_coord_serve.c: a live server's page): HELP/TYPE lines, metric and
 * label name grammar, label value escapes, float values, one TYPE per
 * metric before its samples, samples of a metric contiguous, every line
 * ended by a newline. Anything longer than the fixed buffers below is
 * rejected, not truncated. */
#ifndef NAWAL_PROM_TEST_UTIL_H
#define NAWAL_PROM_TEST_UTIL_H

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROM_MAX_SAMPLES 512
#define PROM_MAX_TYPED 64
#define PROM_NAME 64
#define PROM_LABELS 4
#define PROM_VALUE 128

typedef struct {
    char name[PROM_NAME], labels[PROM_LABELS][2][PROM_VALUE];
    int nl;
    double v;
} prom_sample;

static inline int prom_name_char(int c, int first) { return isalpha(c) || c == '_' || c == ':' || (!first && isdigit(c)); }

#define PROM_FAIL(msg)                       \
    do {                                     \
        snprintf(why, 64, "%s", msg);        \
        return -1;                           \
    } while (0)

/* Parses one exposition document into out[0..max); returns the number of
 * samples or -1 with the reason in why (64 bytes). types_out (may be NULL,
 * PROM_MAX_TYPED x 2 x PROM_NAME) gets each TYPE line's name and type. */
static inline int prom_parse_typed(const char *t, prom_sample *out, int max, char *why,
                                   char (*types_out)[2][PROM_NAME], int *ntypes_out) {
    char typed[PROM_MAX_TYPED][PROM_NAME];
    int ntyped = 0, ns = 0;
    char last_metric[PROM_NAME] = "";
    while (*t) {
        const char *eol = strchr(t, '\n');
        if (!eol) PROM_FAIL("last line lacks a newline");
        if (t[0] == '#') {
            char kw[8], nm[PROM_NAME];
            if (sscanf(t, "# %7s %63s", kw, nm) != 2) PROM_FAIL("bad comment line");
            if (!strcmp(kw, "TYPE")) {
                const char *ty = t + 7 + strlen(nm) + 1;
                int counter = !strncmp(ty, "counter\n", 8);
                if (!counter && strncmp(ty, "gauge\n", 6)) PROM_FAIL("bad TYPE");
                for (int i = 0; i < ntyped; i++)
                    if (!strcmp(typed[i], nm)) PROM_FAIL("TYPE twice");
                if (ntyped == PROM_MAX_TYPED) PROM_FAIL("too many metrics for this parser");
                if (types_out) {
                    strcpy(types_out[ntyped][0], nm);
                    strcpy(types_out[ntyped][1], counter ? "counter" : "gauge");
                }
                strcpy(typed[ntyped++], nm);
            } else if (strcmp(kw, "HELP")) PROM_FAIL("unknown comment keyword");
            else
                for (const char *p = t; p < eol; p++)
                    if (*p == '\\') {
                        if (p[1] != '\\' && p[1] != 'n') PROM_FAIL("bad HELP escape");
                        p++;
                    }
            t = eol + 1;
            continue;
        }
        if (ns == max) PROM_FAIL("too many samples for this parser");
        prom_sample *s = &out[ns];
        memset(s, 0, sizeof *s);
        const char *p = t;
        int k = 0;
        if (!prom_name_char((unsigned char)*p, 1)) PROM_FAIL("bad metric name start");
        while (prom_name_char((unsigned char)*p, 0)) {
            if (k == PROM_NAME - 1) PROM_FAIL("metric name too long for this parser");
            s->name[k++] = *p++;
        }
        if (*p == '{') {
            p++;
            while (*p != '}') {
                if (s->nl == PROM_LABELS) PROM_FAIL("too many labels for this parser");
                char *ln = s->labels[s->nl][0], *lv = s->labels[s->nl][1];
                int a = 0, b = 0;
                if (!prom_name_char((unsigned char)*p, 1) || *p == ':') PROM_FAIL("bad label name");
                while (prom_name_char((unsigned char)*p, 0) && *p != ':') {
                    if (a == PROM_VALUE - 1) PROM_FAIL("label name too long");
                    ln[a++] = *p++;
                }
                if (p[0] != '=' || p[1] != '"') PROM_FAIL("label lacks =\"");
                p += 2;
                while (*p != '"') {
                    if (*p == '\n' || !*p) PROM_FAIL("raw newline in label value");
                    if (b == PROM_VALUE - 1) PROM_FAIL("label value too long");
                    if (*p == '\\') {
                        p++;
                        if (*p == 'n') lv[b++] = '\n';
                        else if (*p == '\\' || *p == '"') lv[b++] = *p;
                        else PROM_FAIL("bad label escape");
                        p++;
                    } else lv[b++] = *p++;
                }
                p++;
                s->nl++;
                if (*p == ',') p++;
                else if (*p != '}') PROM_FAIL("labels not separated");
            }
            p++;
        }
        if (*p++ != ' ') PROM_FAIL("no space before value");
        char *end;
        s->v = strtod(p, &end);
        if (end == p || end != eol) PROM_FAIL("bad value");
        int was_typed = 0;
        for (int i = 0; i < ntyped; i++) was_typed |= !strcmp(typed[i], s->name);
        if (!was_typed) PROM_FAIL("sample before its TYPE");
        if (strcmp(last_metric, s->name)) {
            for (int i = 0; i < ns; i++)
                if (!strcmp(out[i].name, s->name)) PROM_FAIL("samples of a metric not contiguous");
            strcpy(last_metric, s->name);
        }
        ns++;
        t = eol + 1;
    }
    if (ntypes_out) *ntypes_out = ntyped;
    return ns;
}

static inline int prom_parse(const char *t, prom_sample *out, int max, char *why) {
    return prom_parse_typed(t, out, max, why, NULL, NULL);
}

#undef PROM_FAIL

#endif
