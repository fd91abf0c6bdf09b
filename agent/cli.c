/* cli.c - see cli.h. */
#include "cli.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(const char *usage, const nawal_flag *flags, size_t n) {
    printf("%s\n\nOptions:\n", usage);
    for (size_t i = 0; i < n; i++) {
        const nawal_flag *f = &flags[i];
        char def[64] = "";
        if (f->required) goto print;
        switch (f->kind) {
        case NAWAL_FLAG_INT: snprintf(def, sizeof def, " (default %d)", *(int *)f->dst); break;
        case NAWAL_FLAG_U64: snprintf(def, sizeof def, " (default %llu)", (unsigned long long)*(uint64_t *)f->dst); break;
        case NAWAL_FLAG_FLOAT: snprintf(def, sizeof def, " (default %g)", *(float *)f->dst); break;
        case NAWAL_FLAG_STR: if (*(const char **)f->dst) snprintf(def, sizeof def, " (default %s)", *(const char **)f->dst); break;
        case NAWAL_FLAG_BOOL: break;
        }
    print:
        printf("  --%-16s %s%s%s\n", f->name, f->help, f->required ? " (required)" : "", def);
    }
    printf("  --%-16s %s\n", "help", "show this help");
}

static int set_value(nawal_flag *f, const char *v) {
    char *end;
    errno = 0;
    int ranged = f->min <= f->max;
    switch (f->kind) {
    case NAWAL_FLAG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < -2147483647L || x > 2147483647L) goto bad;
        if (ranged && (x < f->min || x > f->max)) goto range;
        *(int *)f->dst = (int)x;
        return 0;
    }
    case NAWAL_FLAG_U64: {
        if (v[0] == '-') goto bad;
        unsigned long long x = strtoull(v, &end, 0);
        if (errno || *end || end == v) goto bad;
        if (ranged && ((double)x < f->min || (double)x > f->max)) goto range;
        *(uint64_t *)f->dst = x;
        return 0;
    }
    case NAWAL_FLAG_FLOAT: {
        float x = strtof(v, &end);
        if (errno || *end || end == v || !isfinite(x)) goto bad;
        if (ranged && (x < f->min || x > f->max)) goto range;
        *(float *)f->dst = x;
        return 0;
    }
    case NAWAL_FLAG_STR: *(const char **)f->dst = v; return 0;
    case NAWAL_FLAG_BOOL: break;
    }
bad:
    fprintf(stderr, "error: --%s: invalid value '%s'\n", f->name, v);
    return -1;
range:
    fprintf(stderr, "error: --%s: %s is outside [%g, %g]\n", f->name, v, f->min, f->max);
    return -1;
}

int nawal_flags_parse(int argc, char **argv, nawal_flag *flags, size_t n, const char *usage) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { print_help(usage, flags, n); return 1; }
        if (strncmp(a, "--", 2) != 0) { fprintf(stderr, "error: unexpected argument '%s' (see --help)\n", a); return 2; }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        nawal_flag *f = NULL;
        for (size_t k = 0; k < n; k++)
            if (strlen(flags[k].name) == len && strncmp(flags[k].name, name, len) == 0) { f = &flags[k]; break; }
        if (!f) { fprintf(stderr, "error: unknown option '%.*s' (see --help)\n", (int)len + 2, a); return 2; }
        f->seen = 1;
        if (f->kind == NAWAL_FLAG_BOOL) {
            if (eq) { fprintf(stderr, "error: --%s takes no value\n", f->name); return 2; }
            *(int *)f->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) { fprintf(stderr, "error: --%s needs a value\n", f->name); return 2; }
        if (set_value(f, v)) return 2;
    }
    for (size_t k = 0; k < n; k++)
        if (flags[k].required && !flags[k].seen) { fprintf(stderr, "error: --%s is required (see --help)\n", flags[k].name); return 2; }
    return 0;
}
