/* test_coord_metrics.c - the coordinator's /metrics text and its structured
 * log lines. The exposition output is read back by an independent strict
 * parser of the Prometheus text format 0.0.4 (prom_test_util.h: HELP/TYPE
 * lines, metric and label name grammar, label value escapes, float values,
 * one TYPE per metric before its samples, samples of a metric contiguous), on fresh
 * random names, label values (quotes, backslashes, newlines, UTF-8) and
 * values; every value set must come back exactly. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "log.h"
#include "metrics.h"
#include "prom_test_util.h"
#include "test_util.h"

#define MAXS PROM_MAX_SAMPLES

Test(metrics, exposition_round_trips_through_a_strict_parser) {
    uint64_t seed = test_seed("metrics");
    static const char *const pieces[] = { "a", "Z", " ", "\"", "\\", "\n", "\xc3\xa9", "=", ",", "}", "7" };
    for (int round = 0; round < 50; round++) {
        nawal_metrics *m = nawal_metrics_new();
        int nmet = 1 + test_rand_int(&seed, 6);
        char names[8][32], lvals[8][6][40];
        double expect[8][6];
        int nsamp[8];
        for (int i = 0; i < nmet; i++) {
            snprintf(names[i], sizeof names[i], "nawal_m%d_%s", i, i % 2 ? "total" : "bytes");
            int id = nawal_metric_define(m, names[i], i % 2 ? NAWAL_METRIC_COUNTER : NAWAL_METRIC_GAUGE, "help with \\ and\nnewline");
            cr_assert_eq(id, i);
            nsamp[i] = test_rand_int(&seed, 5);
            for (int j = 0; j < nsamp[i]; j++) {
                int len = test_rand_int(&seed, 8);
                char *o = lvals[i][j];
                o += sprintf(o, "%d", j); /* distinct */
                for (int c = 0; c < len; c++) o += sprintf(o, "%s", pieces[test_rand_int(&seed, 11)]);
                double v = i % 2 ? (double)test_rand_int(&seed, 1000000) : test_rand_normal(&seed) * 1e6;
                const char *lab[] = { "reason", lvals[i][j], NULL };
                cr_assert_eq(nawal_metric_set(m, i, lab, v), 0);
                if (i % 2) cr_assert_eq(nawal_metric_add(m, i, lab, 3.0), 0);
                expect[i][j] = v + (i % 2 ? 3.0 : 0.0);
            }
        }
        size_t len;
        char *text = nawal_metrics_render(m, &len);
        cr_assert(text);
        cr_assert_eq(strlen(text), len);
        prom_sample ps[MAXS];
        char why[128] = "";
        int n = prom_parse(text, ps, MAXS, why);
        cr_assert(n >= 0, "seed-round %d: exposition rejected: %s\n%s", round, why, text);
        int k = 0;
        for (int i = 0; i < nmet; i++) {
            if (nsamp[i] == 0) { /* a metric with no samples shows a single 0 */
                cr_assert_str_eq(ps[k].name, names[i]);
                cr_assert_eq(ps[k].v, 0.0);
                k++;
                continue;
            }
            for (int j = 0; j < nsamp[i]; j++, k++) {
                cr_assert_str_eq(ps[k].name, names[i]);
                cr_assert_eq(ps[k].nl, 1);
                cr_assert_str_eq(ps[k].labels[0][0], "reason");
                cr_assert_str_eq(ps[k].labels[0][1], lvals[i][j], "label value changed");
                cr_assert_eq(ps[k].v, expect[i][j], "value %.17g vs %.17g", ps[k].v, expect[i][j]);
            }
        }
        cr_assert_eq(k, n);
        free(text);
        nawal_metrics_free(m);
    }
}

Test(metrics, refuses_bad_names_duplicates_and_counter_decreases) {
    nawal_metrics *m = nawal_metrics_new();
    cr_assert_eq(nawal_metric_define(m, "9bad", NAWAL_METRIC_GAUGE, ""), -1);
    cr_assert_eq(nawal_metric_define(m, "has space", NAWAL_METRIC_GAUGE, ""), -1);
    int c = nawal_metric_define(m, "nawal_updates_total", NAWAL_METRIC_COUNTER, "updates");
    cr_assert_eq(c, 0);
    cr_assert_eq(nawal_metric_define(m, "nawal_updates_total", NAWAL_METRIC_GAUGE, ""), -1);
    cr_assert_eq(nawal_metric_add(m, c, NULL, -1.0), -1);
    cr_assert_eq(nawal_metric_add(m, c, NULL, 2.0), 0);
    cr_assert_eq(nawal_metric_set(m, c, NULL, 1.0), -1);
    const char *badlab[] = { "__reserved", "x", NULL };
    cr_assert_eq(nawal_metric_add(m, c, badlab, 1.0), -1);
    cr_assert_eq(nawal_metric_get(m, c, NULL), 2.0);
    cr_assert_eq(nawal_metric_add(m, 7, NULL, 1.0), -1);
    nawal_metrics_free(m);
}

Test(log, one_line_per_event_levels_and_quoting) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert(f);
    nawal_log_set_stream(f);
    nawal_log_set_level(NAWAL_LOG_INFO);
    char q[128];
    nawal_log(NAWAL_LOG_DEBUG, "hidden", "x=%d", 1);
    nawal_log(NAWAL_LOG_INFO, "round_closed", "round=%d reason=%s", 3, nawal_log_quote(q, sizeof q, "two words \"and\" a\nnewline"));
    nawal_log(NAWAL_LOG_ERROR, "oops", "detail=%s", "multi\nline");
    fflush(f);
    nawal_log_set_stream(NULL);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    cr_assert_eq(lines, 2, "%s", buf);
    cr_assert(strstr(buf, "hidden") == NULL);
    cr_assert(strstr(buf, "level=info event=round_closed round=3 reason=\"two words \\\"and\\\" a\\nnewline\"") != NULL, "%s", buf);
    cr_assert(strstr(buf, "level=error event=oops detail=multi line") != NULL, "%s", buf);
    cr_assert(strncmp(buf, "ts=", 3) == 0);
    nawal_log_level lv;
    cr_assert_eq(nawal_log_parse_level("warn", &lv), 0);
    cr_assert_eq(lv, NAWAL_LOG_WARN);
    cr_assert_eq(nawal_log_parse_level("loud", &lv), -1);
    cr_assert_str_eq(nawal_log_quote(q, sizeof q, "plain"), "plain");
    cr_assert_str_eq(nawal_log_quote(q, sizeof q, ""), "\"\"");
    fclose(f);
    free(buf);
}
