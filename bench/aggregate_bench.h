/* aggregate_bench.h - `nawal-bench aggregate`: FedAvg throughput over
 * dense delta files on disk against the same machine's memcpy
 * (bench/aggregate.c). */
#ifndef NAWAL_AGGREGATE_BENCH_H
#define NAWAL_AGGREGATE_BENCH_H

/* argv[0] is "aggregate"; returns the process exit status. */
int bench_aggregate(int argc, char **argv);

#endif
