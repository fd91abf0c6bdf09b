/* timing.h - what every nawal-bench sub-command measures with: a monotonic
 * clock in seconds and the median of repeated measurements. */
#ifndef NAWAL_BENCH_TIMING_H
#define NAWAL_BENCH_TIMING_H

double bench_now_s(void);
/* median of v[0..n) (n >= 1); sorts v in place */
double bench_median(double *v, int n);

#endif
