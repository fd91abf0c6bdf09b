/* error.h - the one helper every parser and loader uses to report failure:
 * formats a message into the caller's (err, errlen) buffer, which may be
 * NULL, and returns -1 so call sites read `return nawal_fail(err, errlen, ...)`.
 * Lives in proto/ because proto is the lowest library the file-format code
 * (proto/, model/) shares. */
#ifndef NAWAL_ERROR_H
#define NAWAL_ERROR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static inline int nawal_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline int nawal_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

#endif
