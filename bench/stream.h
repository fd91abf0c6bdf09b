/* stream.h - `nawal-bench stream` (bench/stream.c): blob streaming
 * throughput and per-end peak memory over loopback. */
#ifndef NAWAL_BENCH_STREAM_H
#define NAWAL_BENCH_STREAM_H

/* argv[0] is "stream"; returns the process exit code */
int bench_stream(int argc, char **argv);

#endif
