/* cli.h - a small table-driven command-line flag parser shared by the
 * sub-commands of nawal-agent and by nawal-bench: `--name value` or
 * `--name=value`, typed destinations, range-checked numbers, --help text
 * generated from the table. */
#ifndef NAWAL_CLI_H
#define NAWAL_CLI_H

#include <stddef.h>
#include <stdint.h>

typedef enum { NAWAL_FLAG_INT, NAWAL_FLAG_U64, NAWAL_FLAG_FLOAT, NAWAL_FLAG_STR, NAWAL_FLAG_BOOL } nawal_flag_kind;

typedef struct {
    const char *name;      /* without the leading "--" */
    nawal_flag_kind kind;
    void *dst;             /* int*, uint64_t*, float*, const char**, int* (bool) */
    const char *help;
    double min, max;       /* inclusive range for INT/U64/FLOAT (ignored if min > max) */
    int required;
    int seen;              /* set by the parser */
} nawal_flag;

/* Parses argv[1..argc) (argv[0] is the command name). Returns 0 when all
 * flags parsed, 1 when --help was printed to stdout, 2 after printing a
 * usage error to stderr. */
int nawal_flags_parse(int argc, char **argv, nawal_flag *flags, size_t n, const char *usage);

#endif
