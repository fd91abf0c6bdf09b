/* log.c - see log.h. */
#include "log.h"
#include <stdarg.h>
#include <string.h>
#include <time.h>

static nawal_log_level min_level = NAWAL_LOG_INFO;
static FILE *out_stream;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void nawal_log_set_level(nawal_log_level level) { min_level = level; }
void nawal_log_set_stream(FILE *f) { out_stream = f; }

int nawal_log_parse_level(const char *name, nawal_log_level *level) {
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) { *level = (nawal_log_level)i; return 0; }
    return -1;
}

void nawal_log(nawal_log_level level, const char *event, const char *fmt, ...) {
    if (level < min_level) return;
    FILE *f = out_stream ? out_stream : stderr;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[4096];
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level], event);
    if (n > 0 && (size_t)n < sizeof line - 2 && fmt && fmt[0]) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (m > 0) n += m < (int)(sizeof line - (size_t)n - 1) ? m : (int)(sizeof line - (size_t)n - 2);
    }
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    /* one event, one line: no raw newline may split it */
    for (int i = 0; i < n; i++) if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, f);
    fflush(f);
}

const char *nawal_log_quote(char *buf, size_t cap, const char *v) {
    if (cap == 0) return buf;
    int plain = v[0] != '\0';
    for (const char *p = v; *p && plain; p++)
        plain = !(*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == '\n' || *p == '\t');
    size_t o = 0;
    if (plain) {
        snprintf(buf, cap, "%s", v);
        return buf;
    }
    if (o + 1 < cap) buf[o++] = '"';
    for (const char *p = v; *p && o + 3 < cap; p++) {
        if (*p == '"' || *p == '\\') { buf[o++] = '\\'; buf[o++] = *p; }
        else if (*p == '\n') { buf[o++] = '\\'; buf[o++] = 'n'; }
        else buf[o++] = *p;
    }
    if (o + 1 < cap) buf[o++] = '"';
    buf[o < cap ? o : cap - 1] = '\0';
    return buf;
}
