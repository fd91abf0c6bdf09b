/* timing.h - what every nawal-bench sub-command measures with: a monotonic
 * clock in seconds and the median of repeated measurements, and the parser
 * of their --params style counts. */
#ifndef NAWAL_BENCH_TIMING_H
#define NAWAL_BENCH_TIMING_H

#include <stdint.h>

double bench_now_s(void);
/* median of v[0..n) (n >= 1); sorts v in place */
double bench_median(double *v, int n);
/* "124M" -> 124000000 (K, M, G are powers of ten; 1 .. 4e9): 0, or -1 */
int bench_parse_count(const char *s, uint64_t *out);

#endif
