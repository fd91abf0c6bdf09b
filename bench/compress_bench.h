/* compress_bench.h - `nawal-bench compress`: the delta codec's compressed
 * size and encode / decode throughput on a synthetic 124M-parameter delta
 * (bench/compress.c). */
#ifndef NAWAL_COMPRESS_BENCH_H
#define NAWAL_COMPRESS_BENCH_H

/* argv[0] is "compress"; returns the process exit status. */
int bench_compress(int argc, char **argv);

#endif
