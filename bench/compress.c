/* compress.c - nawal-bench compress: what the delta codec
 * (proto/delta_codec.h) makes of a model-sized delta: the frame's size
 * against the dense fp32 delta, and how fast an agent encodes it and a
 * coordinator decodes it.
 *
 * The delta is synthetic but not easy: Laplace values (heavier tails than a
 * Gaussian) whose scale changes from tensor to tensor (tensors of 768 x 768
 * floats, scales log-uniform in [1e-4, 1e-2]), as a trained model's
 * layers differ; fixed seed, so runs compare. Each repeat starts from a
 * zero residual (an agent's first round; the work does not depend on the
 * residual's values) and times, each once:
 *   encode       nawal_delta_encode with error feedback: delta + residual,
 *                top-k selection on --device (cuda: the data is staged on
 *                the GPU), quantisation, zstd, residual update
 *   decode       nawal_delta_decode into a dense buffer
 *   accumulate   nawal_delta_accumulate into a dense accumulator (what the
 *                coordinator's FedAvg does per update)
 * Throughputs are dense fp32 bytes (4 n) per second, medians over
 * --repeats after one untimed warm-up; decode and accumulate run on one
 * host thread, encode's bulk passes and selection on the backend. */
#include "compress_bench.h"
#include "timing.h"
#include "cli.h"
#include "delta_codec.h"
#include "ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPEATS 16
#define TENSOR 589824 /* floats per synthetic tensor (768 x 768) */

/* Laplace(b_t) values, b_t log-uniform in [1e-4, 1e-2] per tensor t */
static void synth_delta(float *d, size_t n) {
    size_t nt = (n + TENSOR - 1) / TENSOR;
    #pragma omp parallel for schedule(dynamic, 1)
    for (size_t t = 0; t < nt; t++) {
        uint64_t s = 0x9E3779B97F4A7C15ull * (t + 1) ^ 0xD1B54A32D192ED03ull;
        s ^= s >> 29;
        float b = powf(10.0f, -4.0f + 2.0f * (float)((s >> 11) * (1.0 / 9007199254740992.0)));
        size_t i1 = (t + 1) * TENSOR < n ? (t + 1) * TENSOR : n;
        for (size_t i = t * TENSOR; i < i1; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17; /* xorshift64 */
            float u = (float)((s >> 40) + 1) * (1.0f / 16777217.0f); /* (0, 1) */
            d[i] = (s & 1 ? b : -b) * -logf(u);
        }
    }
}

int bench_compress(int argc, char **argv) {
    const char *params_s = "124M", *quant = "fp16", *device = "cpu";
    float ratio = NAWAL_DELTA_DEFAULT_RATIO;
    int threads = 0, repeats = 5, level = 0, block = NAWAL_DELTA_DEFAULT_BLOCK;
    nawal_flag flags[] = {
        {"params", NAWAL_FLAG_STR, &params_s, "floats in the delta (K/M/G = 1e3/1e6/1e9)", 1, 0, 0, 0},
        {"ratio", NAWAL_FLAG_FLOAT, &ratio, "fraction of entries sent (1 = dense)", 1e-9, 1, 0, 0},
        {"quant", NAWAL_FLAG_STR, &quant, "value encoding: fp16 | int8 | fp32", 1, 0, 0, 0},
        {"block", NAWAL_FLAG_INT, &block, "int8: values per scale", 1, NAWAL_DELTA_MAX_BLOCK, 0, 0},
        {"level", NAWAL_FLAG_INT, &level, "zstd level (0 = zstd's default, 3)", -7, 22, 0, 0},
        {"device", NAWAL_FLAG_STR, &device, "top-k selection on cpu | cuda", 1, 0, 0, 0},
        {"threads", NAWAL_FLAG_INT, &threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0},
        {"repeats", NAWAL_FLAG_INT, &repeats, "timed repeats (median reported)", 1, MAX_REPEATS, 0, 0},
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof *flags,
                               "usage: nawal-bench compress [--params 124M] [--ratio 0.01] [--quant fp16|int8|fp32] "
                               "[--device cpu|cuda]");
    if (pr) return pr == 1 ? 0 : 2;
    uint64_t n64;
    if (bench_parse_count(params_s, &n64) || n64 > NAWAL_DELTA_MAX_N) {
        fprintf(stderr, "error: --params: '%s' is not a count like 124M (1 .. 4G floats)\n", params_s);
        return 2;
    }
    nawal_delta_params p = { ratio, NAWAL_DELTA_F16, (uint32_t)block, level };
    if (!strcmp(quant, "fp16")) p.values = NAWAL_DELTA_F16;
    else if (!strcmp(quant, "int8")) p.values = NAWAL_DELTA_I8;
    else if (!strcmp(quant, "fp32")) p.values = NAWAL_DELTA_F32;
    else {
        fprintf(stderr, "error: --quant %s: expected fp16, int8 or fp32\n", quant);
        return 2;
    }
    if (strcmp(device, "cpu") && strcmp(device, "cuda")) {
        fprintf(stderr, "error: --device %s: expected cpu or cuda\n", device);
        return 2;
    }
    char err[512];
    const nawal_ops *o = nawal_ops_cpu(threads);
    if (!strcmp(device, "cuda") && nawal_ops_open(&o, "cuda", err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    size_t n = (size_t)n64, k = (size_t)nawal_delta_topk_count(n64, ratio);
    double dense = 4.0 * (double)n;
    float *d = malloc(n * sizeof *d), *r = malloc(n * sizeof *r), *out = malloc(n * sizeof *out);
    if (!d || !r || !out) {
        fprintf(stderr, "error: out of memory for 3 x %zu floats\n", n);
        return 1;
    }
    synth_delta(d, n);
    memset(out, 0, n * sizeof *out);
    printf("compress: %zu floats (%.1f MB as dense fp32), %s ratio %g (k = %zu), %s values, zstd level %d\n", n,
           dense * 1e-6, ratio < 1.0f ? "top-k" : "dense", (double)ratio, k, quant, level ? level : 3);
    if (p.values == NAWAL_DELTA_I8) printf("int8 blocks of %d values per fp32 scale\n", block);
    printf("selection on: %s; host: %d OpenMP threads\n", o->device_desc, omp_get_max_threads());
    printf("synthetic delta: Laplace values, scale log-uniform in [1e-4, 1e-2] per %d-float tensor\n", TENSOR);
    fflush(stdout);
    double te[MAX_REPEATS], td[MAX_REPEATS], ta[MAX_REPEATS];
    size_t flen = 0;
    for (int rep = -1; rep < repeats; rep++) {
        memset(r, 0, n * sizeof *r);
        uint8_t *f;
        double t0 = bench_now_s();
        if (nawal_delta_encode(o, &p, d, r, n, &f, &flen, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        double t1 = bench_now_s();
        int rc = nawal_delta_decode(out, n, f, flen, err, sizeof err);
        double t2 = bench_now_s();
        if (rc == 0) rc = nawal_delta_accumulate(out, NULL, n, 0.5f, f, flen, err, sizeof err);
        double t3 = bench_now_s();
        free(f);
        if (rc) {
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        if (rep < 0) continue;
        te[rep] = t1 - t0, td[rep] = t2 - t1, ta[rep] = t3 - t2;
        printf("repeat %d: encode %.3f s (%.2f GB/s)  decode %.3f s (%.2f GB/s)  accumulate %.3f s (%.2f GB/s)  "
               "frame %zu bytes\n", rep + 1, te[rep], dense / te[rep] * 1e-9, td[rep], dense / td[rep] * 1e-9, ta[rep],
               dense / ta[rep] * 1e-9, flen);
        fflush(stdout);
    }
    printf("compressed_bytes %zu  (%.2f bytes per sent entry)\n", flen, (double)flen / (double)k);
    printf("ratio_vs_dense_fp32 %.1fx  (%.0f / %zu bytes)\n", dense / (double)flen, dense, flen);
    printf("encode_gbps %.2f  decode_gbps %.2f  accumulate_gbps %.2f  (dense fp32 bytes per second, median of %d)\n",
           dense / bench_median(te, repeats) * 1e-9, dense / bench_median(td, repeats) * 1e-9,
           dense / bench_median(ta, repeats) * 1e-9, repeats);
    free(d);
    free(r);
    free(out);
    return 0;
}
