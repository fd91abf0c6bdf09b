/* main.c - nawal-bench, the throughput harness.
 *
 *   nawal-bench train  : training-step throughput (tokens/s, model FLOP/s) of a
 *                        GPT config on random tokens, median of repeats, plus
 *                        the GFLOP/s the matmul backend reaches on the same
 *                        model's GEMM shapes, so model FLOP/s can be read as a
 *                        fraction of what the library itself does.
 *   nawal-bench matmul : just the GEMM part.
 *   nawal-bench stream : blob streaming over loopback WebSockets (bench/stream.c).
 *   nawal-bench aggregate : FedAvg GB/s over delta files vs memcpy (bench/aggregate.c).
 *   nawal-bench compress : delta codec size and encode/decode GB/s (bench/compress.c).
 * Timings are medians over --repeats runs; compare only with baselines
 * measured in the same run (bench/compare/ for PyTorch). */
#include "timing.h"
#include "cli.h"
#include "gpt.h"
#include "optim.h"
#include "dp.h"
#include "aggregate_bench.h"
#include "compress_bench.h"
#include "stream.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    nawal_gpt_config cfg;
    int batch, steps, warmup_steps, repeats, threads, profile, dp, graphs;
    const char *device, *precision, *preset, *dp_pass2, *dp_method;
    float peak_tflops;
} bench_opts;

/* Dense datasheet peak TFLOP/s of a GPU for a matmul precision (SXM parts
 * unless the name says PCIe); 0 when the card is not in the table. */
static double card_peak_tflops(const char *desc, nawal_precision p) {
    static const struct { const char *name, *not_name; double fp32, tf32, bf16; } cards[] = {
        { "H200", NULL, 66.9, 494.7, 989.4 },
        { "H100", "PCIe", 66.9, 494.7, 989.4 },
        { "H100 PCIe", NULL, 51.2, 378.0, 756.0 },
        { "A100", NULL, 19.5, 156.0, 312.0 },
    };
    for (size_t i = 0; i < sizeof cards / sizeof cards[0]; i++) {
        if (!strstr(desc, cards[i].name) || (cards[i].not_name && strstr(desc, cards[i].not_name))) continue;
        return p == NAWAL_PREC_BF16 ? cards[i].bf16 : p == NAWAL_PREC_TF32 ? cards[i].tf32 : cards[i].fp32;
    }
    return 0.0;
}

/* uniform random values in [-scale, scale): matmul speed on constant or zero
 * data can differ from real data (tensor-core power draw) */
static void fill_random(const nawal_ops *o, float *d, size_t n, float scale) {
    float *h = malloc(n * sizeof(float));
    if (!h) { fprintf(stderr, "error: out of memory\n"); exit(1); }
    uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = scale * ((float)(s >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    o->upload(o, d, h, n * sizeof(float));
    free(h);
}

/* GFLOP/s of the backend's matmul_fwd on the model's GEMM shapes, FLOP-weighted */
static double bench_matmul(const nawal_ops *o, const bench_opts *b, int verbose) {
    int N = b->batch * b->cfg.n_ctx, C = b->cfg.n_embd;
    int shapes[5][2] = { { C, 3 * C }, { C, C }, { C, 4 * C }, { 4 * C, C }, { C, b->cfg.vocab } };
    double total_flops = 0.0, total_time = 0.0;
    for (int s = 0; s < 5; s++) {
        int K = shapes[s][0], M = shapes[s][1];
        float *x = o->alloc(o, (size_t)N * K * sizeof(float)), *w = o->alloc(o, (size_t)K * M * sizeof(float));
        float *y = o->alloc(o, (size_t)N * M * sizeof(float));
        if (!x || !w || !y) { fprintf(stderr, "error: out of memory\n"); exit(1); }
        fill_random(o, x, (size_t)N * K, 1.0f);
        fill_random(o, w, (size_t)K * M, 0.02f);
        double flops = 2.0 * N * K * M, times[64];
        int reps = b->repeats < 64 ? b->repeats : 64;
        o->matmul_fwd(o, y, x, w, NULL, N, K, M, NAWAL_W_IN_OUT); /* warm-up (plans, autotuning) */
        o->sync(o);
        double c0 = bench_now_s();
        o->matmul_fwd(o, y, x, w, NULL, N, K, M, NAWAL_W_IN_OUT);
        o->sync(o);
        double one = bench_now_s() - c0; /* iterations so that a repeat lasts ~20 ms */
        int iters = one > 0.02 ? 1 : (int)(0.02 / (one > 1e-7 ? one : 1e-7)) + 1;
        if (iters > 10000) iters = 10000;
        for (int r = 0; r < reps; r++) {
            o->sync(o);
            double t0 = bench_now_s();
            for (int i = 0; i < iters; i++) o->matmul_fwd(o, y, x, w, NULL, N, K, M, NAWAL_W_IN_OUT);
            o->sync(o);
            times[r] = (bench_now_s() - t0) / iters;
        }
        double t = bench_median(times, reps);
        if (verbose) printf("matmul %5d x %5d x %5d: %7.1f GFLOP/s\n", N, K, M, flops / t * 1e-9);
        total_flops += flops;
        total_time += t;
        o->free(o, x); o->free(o, w); o->free(o, y);
    }
    double g = total_flops / total_time * 1e-9;
    printf("matmul_gflops %.1f  (%s, model's GEMM shapes, FLOP-weighted)\n", g, o->name);
    return g;
}

/* one training step on the fixed batch: plain (clip 1.0) or DP-SGD (clip
 * each example to 1.0, noise multiplier 1.0); 0 or -1 with err */
static int train_step(nawal_gpt *m, const int32_t *in, const int32_t *tg, const bench_opts *b, int dp, int i,
                      char *err, size_t errlen) {
    nawal_adamw_config ac = { 0.9f, 0.99f, 1e-8f, 0.1f };
    nawal_gpt_zero_grad(m);
    if (dp) {
        float loss;
        if (nawal_gpt_dp_accumulate(m, in, tg, b->batch, b->cfg.n_ctx, 1.0f, NULL, &loss, err, errlen)) return -1;
        nawal_gpt_dp_finish(m, 1.0f, (double)b->batch, 1, (uint64_t)i);
    } else {
        float l = nawal_gpt_forward_backward(m, in, tg, b->batch, b->cfg.n_ctx, NULL, err, errlen);
        if (isnan(l)) return -1;
        nawal_gpt_clip_grad_norm(m, 1.0f);
    }
    return nawal_gpt_adamw_step(m, &ac, 1e-4f) ? (snprintf(err, errlen, "out of memory"), -1) : 0;
}

/* after a DP step whose clipped sums carried the rounding margin: its size
 * relative to ||g_b||, the median over the batch (how much harder clipped
 * examples were clipped for the speed of reduced-precision products) */
static void print_dp_margin(const nawal_gpt *m) {
    const nawal_ops *o = m->ops;
    nawal_precision p2 = nawal_gpt_dp_pass2_in_force(m);
    double f = nawal_gpt_dp_margin_factor(p2);
    if (f == 0.0 || !m->dp_bounds || m->cur_B <= 0) return;
    int B = m->cur_B, n = 0;
    float *h = malloc((size_t)B * 2 * sizeof(float));
    double *r = malloc((size_t)B * sizeof(double));
    if (!h || !r) { free(h); free(r); return; }
    o->download(o, h, m->dp_norms, (size_t)B * sizeof(float));
    o->download(o, h + B, m->dp_bounds, (size_t)B * sizeof(float));
    for (int b = 0; b < B; b++)
        if (h[b] > 0.0f) r[n++] = f * sqrt((double)h[B + b]) / sqrt((double)h[b]);
    if (n) printf("dp_margin_pct %.2f  (clipped sums in %s: rounding margin / ||g_b||, median of the batch)\n",
                  100.0 * bench_median(r, n), nawal_precision_name(p2));
    free(h);
    free(r);
}

static int bench_train(const nawal_ops *o, const bench_opts *b) {
    char err[512];
    nawal_gpt *m;
    if (nawal_gpt_create(&m, o, &b->cfg, b->batch, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 1; }
    nawal_gpt_init_params(m, 1);
    nawal_gpt_set_graphs(m, b->graphs);
    if (b->graphs) printf("graphs: %s\n", o->capture_begin ? "on (plain steps captured and replayed)" : "none on this backend");
    if (b->dp_pass2) {
        nawal_precision p2;
        if (nawal_precision_parse(b->dp_pass2, &p2) || nawal_gpt_dp_set_pass2(m, p2, err, sizeof err)) {
            fprintf(stderr, "error: --dp-pass2 %s: %s\n", b->dp_pass2, nawal_precision_parse(b->dp_pass2, &p2) ? "expected fp32, tf32 or bf16" : err);
            nawal_gpt_free(m);
            return 2;
        }
    }
    if (b->dp_method) {
        nawal_dp_method dm;
        if (nawal_dp_method_parse(b->dp_method, &dm) || nawal_gpt_dp_set_method(m, dm, err, sizeof err)) {
            fprintf(stderr, "error: --dp-method %s: expected auto, bookkeeping or per-example\n", b->dp_method);
            nawal_gpt_free(m);
            return 2;
        }
    }
    if (b->dp) {
        nawal_dp_method dm = nawal_gpt_dp_method_in_force(m);
        printf("dp method: %s", nawal_dp_method_name(dm));
        if (dm == NAWAL_DP_BOOKKEEPING) printf(", pass 2 (clipped sums): %s", nawal_precision_name(m->dp_pass2));
        printf("\n");
    }
    int N = b->batch * b->cfg.n_ctx;
    int32_t *in = malloc((size_t)N * sizeof(int32_t)), *tg = malloc((size_t)N * sizeof(int32_t));
    uint64_t s = 42;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        in[i] = (int32_t)((s >> 33) % (uint64_t)b->cfg.vocab);
        tg[i] = (int32_t)((s >> 13) % (uint64_t)b->cfg.vocab);
    }
    double per_rep[64], per_rep_dp[64];
    int reps = b->repeats < 64 ? b->repeats : 64;
    printf("model: %d layers, %d heads, width %d, context %d, vocab %d: %zu parameters; batch %d\n",
           b->cfg.n_layer, b->cfg.n_head, b->cfg.n_embd, b->cfg.n_ctx, b->cfg.vocab, m->n_params, b->batch);
    printf("device: %s\n", o->device_desc);
    /* with --dp, plain and DP repeats alternate so drifts of a shared host hit both alike */
    for (int r = -1; r < reps; r++) {
        for (int dp = 0; dp <= b->dp; dp++) {
            int steps = r < 0 ? b->warmup_steps : b->steps;
            o->sync(o);
            double t0 = bench_now_s();
            for (int i = 0; i < steps; i++)
                if (train_step(m, in, tg, b, dp, i, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 1; }
            o->sync(o);
            if (r < 0) continue;
            double tps = (double)steps * N / (bench_now_s() - t0);
            (dp ? per_rep_dp : per_rep)[r] = tps;
            printf("repeat %d%s: %.0f tokens/s\n", r + 1, dp ? " (dp)" : "", tps);
        }
    }
    if (b->profile) { /* same model, same buffers, ops timed one by one */
        m->ops = nawal_ops_profiled(o);
        for (int i = 0; i < b->steps; i++)
            if (train_step(m, in, tg, b, b->dp, i, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 1; }
        nawal_ops_profile_print(stdout, b->steps);
        m->ops = o;
    }
    double tps = bench_median(per_rep, reps);
    if (b->dp) {
        double dtps = bench_median(per_rep_dp, reps);
        printf("dp_train_tokens_per_s %.0f  (DP-SGD: per-example clip 1.0, noise multiplier 1.0, same batch)\n", dtps);
        printf("dp_step_time_ratio %.3f  (DP step time / plain step time, medians)\n", tps / dtps);
        print_dp_margin(m);
    }
    double flops = nawal_gpt_train_flops_per_token(&b->cfg, b->cfg.n_ctx) * tps;
    double mm = bench_matmul(o, b, 0);
    printf("train_tokens_per_s %.0f  (median of %d repeats of %d steps)\n", tps, reps, b->steps);
    printf("model_gflops %.1f  (6N + 6LCT per token)\n", flops * 1e-9);
    printf("model_vs_matmul %.1f%%\n", 100.0 * flops * 1e-9 / mm);
    nawal_precision prec = NAWAL_PREC_FP32;
    nawal_precision_parse(b->precision, &prec);
    double peak = b->peak_tflops > 0 ? b->peak_tflops : card_peak_tflops(o->device_desc, prec);
    if (peak > 0)
        printf("mfu %.1f%%  (of %.1f TFLOP/s %s peak%s)\n", 100.0 * flops * 1e-12 / peak, peak, b->precision,
               b->peak_tflops > 0 ? ", from --peak-tflops" : ", datasheet dense");
    else
        printf("mfu unknown  (no peak for this device: pass --peak-tflops)\n");
    free(in);
    free(tg);
    nawal_gpt_free(m);
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: nawal-bench <train|matmul|stream|aggregate|compress> [options]\n"
               "  train   training-step throughput of a GPT config (default: tiny Shakespeare, 4x4x128, ctx 64, batch 12)\n"
               "  matmul  GFLOP/s of the backend's matmul on that config's GEMM shapes\n"
               "  stream  blob streaming MB/s and per-end peak RSS over loopback (--size 1GiB --tls|--plain)\n"
               "  aggregate  FedAvg GB/s over dense delta files vs memcpy (--params 124M --clients 16 --device cpu)\n"
               "  compress  delta codec: compressed size, encode/decode GB/s (--params 124M --ratio 0.01 --quant fp16|int8)\n"
               "Run 'nawal-bench <command> --help' for options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "stream")) return bench_stream(argc - 1, argv + 1);
    if (!strcmp(cmd, "aggregate")) return bench_aggregate(argc - 1, argv + 1);
    if (!strcmp(cmd, "compress")) return bench_compress(argc - 1, argv + 1);
    if (strcmp(cmd, "train") && strcmp(cmd, "matmul")) { fprintf(stderr, "error: unknown command '%s'\n", cmd); usage(stderr); return 2; }
    bench_opts b = { .cfg = { 4, 4, 128, 64, 257 }, .batch = 12, .steps = 20, .warmup_steps = 5, .repeats = 5,
                     .threads = 0, .device = "auto", .precision = "fp32", .preset = NULL };
    nawal_flag flags[] = {
        { "layers", NAWAL_FLAG_INT, &b.cfg.n_layer, "transformer blocks", 1, 256, 0, 0 },
        { "heads", NAWAL_FLAG_INT, &b.cfg.n_head, "attention heads", 1, 1024, 0, 0 },
        { "width", NAWAL_FLAG_INT, &b.cfg.n_embd, "embedding width", 1, 65536, 0, 0 },
        { "context", NAWAL_FLAG_INT, &b.cfg.n_ctx, "context length", 1, 65536, 0, 0 },
        { "vocab", NAWAL_FLAG_INT, &b.cfg.vocab, "vocabulary size", 2, 1 << 24, 0, 0 },
        { "batch", NAWAL_FLAG_INT, &b.batch, "sequences per step", 1, 1 << 20, 0, 0 },
        { "steps", NAWAL_FLAG_INT, &b.steps, "steps per timed repeat", 1, 1 << 20, 0, 0 },
        { "warmup-steps", NAWAL_FLAG_INT, &b.warmup_steps, "untimed steps first", 0, 1 << 20, 0, 0 },
        { "repeats", NAWAL_FLAG_INT, &b.repeats, "timed repeats (median reported)", 1, 64, 0, 0 },
        { "threads", NAWAL_FLAG_INT, &b.threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0 },
        { "device", NAWAL_FLAG_STR, &b.device, "auto|cpu|cuda", 0, -1, 0, 0 },
        { "precision", NAWAL_FLAG_STR, &b.precision, "matmul precision fp32|tf32|bf16", 0, -1, 0, 0 },
        { "preset", NAWAL_FLAG_STR, &b.preset, "tiny (default) | gpt2-small (12x12x768, ctx 1024, vocab 50257, batch 8); later flags override", 0, -1, 0, 0 },
        { "dp", NAWAL_FLAG_BOOL, &b.dp, "also time DP-SGD steps (per-example clipping + noise) and print the ratio", 0, -1, 0, 0 },
        { "dp-pass2", NAWAL_FLAG_STR, &b.dp_pass2, "DP clipped sums' precision when matmuls are tf32/bf16: fp32 (exact) | tf32 | bf16 (with a rounding margin); default fp32 on the CPU, tf32 on CUDA", 0, -1, 0, 0 },
        { "dp-method", NAWAL_FLAG_STR, &b.dp_method, "DP per-example gradients: auto | bookkeeping (ghost norms + a second pass) | per-example (materialised: exact C in every precision); default per-example while its memory is at most twice the activations'", 0, -1, 0, 0 },
        { "graphs", NAWAL_FLAG_BOOL, &b.graphs, "capture the plain step's forward + backward in a CUDA graph and replay it", 0, -1, 0, 0 },
        { "profile", NAWAL_FLAG_BOOL, &b.profile, "also print a per-op time breakdown of a step", 0, -1, 0, 0 },
        { "peak-tflops", NAWAL_FLAG_FLOAT, &b.peak_tflops, "device peak for the MFU line (default: datasheet table)", 0, 1e9, 0, 0 },
    };
    /* a preset sets the config first; explicit flags then override it */
    for (int i = 2; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--preset") || strcmp(argv[i + 1], "gpt2-small")) continue;
        b.cfg = (nawal_gpt_config){ 12, 12, 768, 1024, 50257 };
        b.batch = 8;
        b.steps = 5;
        b.warmup_steps = 2;
    }
    int pr = nawal_flags_parse(argc - 1, argv + 1, flags, sizeof flags / sizeof flags[0], "usage: nawal-bench train|matmul [options]");
    if (pr) return pr == 1 ? 0 : 2;
    char err[512];
    if (nawal_gpt_config_check(&b.cfg, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 2; }
    const nawal_ops *o;
    nawal_ops_cpu(b.threads);
    if (b.preset && strcmp(b.preset, "tiny") && strcmp(b.preset, "gpt2-small")) {
        fprintf(stderr, "error: unknown preset '%s' (expected tiny or gpt2-small)\n", b.preset);
        return 2;
    }
    if (nawal_ops_open(&o, b.device, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 1; }
    if (nawal_ops_set_precision_name(o, b.precision, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 2; }
    printf("precision: %s\n", b.precision);
    if (!strcmp(cmd, "matmul")) { bench_matmul(o, &b, 1); return 0; }
    return bench_train(o, &b);
}
