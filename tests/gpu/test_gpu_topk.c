/* test_gpu_topk.c - the CUDA backend's topk_select against the CPU
 * backend's (itself checked against a brute-force sort in
 * tests/unit/test_delta_codec.c). Both follow kernels/topk.h's order, so the
 * indices must be identical, not just close: same count, same indices in
 * the same (increasing) order. Inputs of awkward sizes (not multiples of
 * warps, tiles or histogram blocks; below, across and far beyond one
 * compaction tile), Gaussian, heavy-tailed, with heavy ties (few distinct
 * magnitudes, all equal, all zero, signed zeros) and infinities; k from 0 to
 * beyond n. The GPU output is poisoned first and carries guard words that
 * must survive. Skips with one line when no GPU is present. */
#include "gpu_test_util.h"

#define IDX_POISON 0xfffffffeu
#define IDX_GUARD 0xdeadbeefu

enum { K_GAUSS, K_HEAVY, K_FEW, K_EQUAL, K_ZERO, K_INF, K_KINDS };

static float draw(int kind) {
    switch (kind) {
    case K_GAUSS: return nrm();
    case K_HEAVY: return nrm() / (0.01f + (float)rnd(0, 1000) / 1000.0f);
    case K_FEW: return 0.5f * (float)rnd(-2, 2);
    case K_EQUAL: return rnd(0, 1) ? 3.0f : -3.0f;
    case K_ZERO: return rnd(0, 1) ? 0.0f : -0.0f;
    default: return rnd(0, 49) == 0 ? (rnd(0, 1) ? INFINITY : -INFINITY) : nrm();
    }
}

static void topk_case(size_t n, size_t k, int kind) {
    float *h = hf(n);
    for (size_t i = 0; i < n; i++) h[i] = draw(kind);
    dual x = dnew(h, n);
    size_t cap = k + GUARD;
    uint32_t *want = calloc(cap, sizeof *want), *got = calloc(cap, sizeof *got);
    cr_assert(want && got, "out of memory");
    for (size_t j = 0; j < cap; j++) got[j] = j < k ? IDX_POISON : IDX_GUARD;
    uint32_t *gi = GPU->alloc(GPU, cap * sizeof *gi);
    cr_assert(gi != NULL, "GPU alloc");
    GPU->upload(GPU, gi, got, cap * sizeof *got);
    size_t wn = CPU->topk_select(CPU, want, x.c, n, k);
    size_t gn = GPU->topk_select(GPU, gi, x.g, n, k);
    GPU->download(GPU, got, gi, cap * sizeof *got);
    cr_assert_eq(gn, wn, "topk n=%zu k=%zu kind %d: GPU returned %zu, CPU %zu (seed %llu)", n, k, kind, gn, wn, SEED);
    for (size_t j = 0; j < wn; j++)
        cr_assert_eq(got[j], want[j], "topk n=%zu k=%zu kind %d: entry %zu is %u on the GPU, %u on the CPU (seed %llu)", n,
                     k, kind, j, got[j], want[j], SEED);
    for (size_t j = wn; j < cap; j++)
        cr_assert_eq(got[j], j < k ? IDX_POISON : IDX_GUARD, "topk n=%zu k=%zu: GPU wrote entry %zu past its %zu results (seed %llu)",
                     n, k, j, wn, SEED);
    GPU->free(GPU, gi);
    dfree(x);
    free(h);
    free(want);
    free(got);
}

Test(gpu_topk, small_and_awkward_sizes) {
    gpu_start("gpu_topk.small");
    for (int r = 0; r < 120; r++) {
        size_t n = r % 2 ? (size_t)rnd(1, 300) : (size_t)rnd(1000, 70000);
        size_t k;
        switch (r % 6) {
        case 0: k = 1; break;
        case 1: k = n > 1 ? n - 1 : 1; break;
        case 2: k = n + (size_t)rnd(0, 3); break;
        case 3: k = 0; break;
        default: k = (size_t)rnd(1, (int)n);
        }
        topk_case(n, k, r % K_KINDS);
    }
}

Test(gpu_topk, model_sized_inputs) {
    gpu_start("gpu_topk.large");
    const double ratios[] = { 0.001, 0.01, 0.1 };
    for (int r = 0; r < 9; r++) {
        size_t n = (size_t)rnd(3000000, 9000000);
        topk_case(n, (size_t)ceil(ratios[r % 3] * (double)n), r < 6 ? r % 2 : (int)rnd(0, K_KINDS - 1));
    }
    /* 124M parameters at 1%: GPT-2 small's delta */
    topk_case(124439808, 1244399, K_HEAVY);
}
