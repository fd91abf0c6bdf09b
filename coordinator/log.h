/* log.h - the coordinator's structured log: one event per line on stderr,
 *   ts=2026-11-28T03:50:00.123Z level=info event=round_closed round=3 ...
 * key=value pairs after `event` come from a printf-style format; values with
 * spaces, quotes or '=' must go through nawal_log_quote. Lines below the
 * configured level (--log-level debug|info|warn|error) are dropped. */
#ifndef NAWAL_COORD_LOG_H
#define NAWAL_COORD_LOG_H

#include <stddef.h>
#include <stdio.h>

typedef enum { NAWAL_LOG_DEBUG = 0, NAWAL_LOG_INFO, NAWAL_LOG_WARN, NAWAL_LOG_ERROR } nawal_log_level;

void nawal_log_set_level(nawal_log_level level);
/* Redirects output (tests); NULL restores stderr. */
void nawal_log_set_stream(FILE *f);
/* "debug", "info", "warn", "error" -> level; -1 if unknown */
int nawal_log_parse_level(const char *name, nawal_log_level *level);

void nawal_log(nawal_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes v as a log value into buf: unchanged when it is a plain token,
 * else double-quoted with \" \\ \n escaped. Returns buf. */
const char *nawal_log_quote(char *buf, size_t cap, const char *v);

#endif
