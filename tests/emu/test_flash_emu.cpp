/* test_flash_emu.cpp - the CUDA flash-attention kernels
 * (kernels/cuda/attention_flash.cuh), compiled as C++ and run on the CPU
 * under the SIMT emulation of cuda_emu.h, against the CPU backend's
 * attention (kernels/cpu/attention.c, itself checked against a double
 * reference in test_cpu_ops) on fresh random inputs: out and dqkv to 2e-5
 * of max|ref| (both sides fp32, different association), and the kernels'
 * own book-keeping (each row's log-sum-exp, D = sum_j P dP) against double
 * references. Shapes cover both kernel instances (HS 32 and 64, with head
 * sizes that leave padding), T = 1, T across several 64-row blocks and
 * 32-row tiles, and several heads and batch rows. On a GPU,
 * tests/gpu/test_gpu_ops runs the same kernels for real. */
#include <criterion/criterion.h>
#include "cuda_emu.h"
#include "attention_flash.cuh"
#include "ops.h"
#include "../unit/test_util.h"
#include <type_traits>

namespace {

uint64_t g_rng, g_seed;

std::vector<float> randn(size_t n) {
    std::vector<float> v(n);
    for (auto &x : v) x = test_rand_normal(&g_rng);
    return v;
}

template <int HS>
void run_kernels(float *out, float *lse, float *dqkv, float *Dsum, const float *qkv, const float *dout, int B, int T,
                 int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    unsigned gx = fa_grid_x(T), gy = (unsigned)(B * NH);
    emu_launch(gx, gy, FA_ROWS, fa_smem_bytes(0, HS), [=] { flash_fwd_kernel<HS>(out, lse, qkv, T, C, NH, hs, scale); });
    emu_launch(gx, gy, FA_ROWS, fa_smem_bytes(1, HS),
               [=] { flash_dq_kernel<HS>(dqkv, Dsum, dout, qkv, lse, T, C, NH, hs, scale); });
    emu_launch(gx, gy, FA_ROWS, fa_smem_bytes(2, HS),
               [=] { flash_dkv_kernel<HS>(dqkv, dout, qkv, lse, Dsum, T, C, NH, hs, scale); });
}

/* max |got - ref| <= tol * max |ref| */
void check(const char *what, const float *got, const double *ref, size_t n, double tol, int B, int T, int NH, int hs) {
    double mref = 0.0, merr = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) mref = std::max(mref, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= merr)) { merr = e; worst = i; } /* NaN lands here too */
    }
    cr_expect(merr <= tol * (mref > 0 ? mref : 1.0),
              "%s B=%d T=%d NH=%d hs=%d: element %zu is %.9g, reference %.9g (max error %.3g, max |ref| %.3g) (seed %llu)",
              what, B, T, NH, hs, worst, got[worst], ref[worst], merr, mref, (unsigned long long)g_seed);
}

void one_case(const nawal_ops *o, int B, int T, int NH, int hs) {
    int C = NH * hs, P = B * NH;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C;
    std::vector<float> qkv = randn(nq), dout = randn(no);
    /* reference: the CPU backend */
    std::vector<float> out_c(no), att_c((size_t)P * T * T), dqkv_c(nq), datt_c((size_t)P * T * T);
    o->attention_fwd(o, out_c.data(), att_c.data(), qkv.data(), B, T, C, NH);
    o->attention_bwd(o, dqkv_c.data(), datt_c.data(), dout.data(), qkv.data(), att_c.data(), B, T, C, NH);
    /* the kernels, outputs poisoned */
    std::vector<float> out(no, NAN), lse((size_t)P * T, NAN), dqkv(nq, NAN), D((size_t)P * T, NAN);
    if (hs <= 32) run_kernels<32>(out.data(), lse.data(), dqkv.data(), D.data(), qkv.data(), dout.data(), B, T, C, NH);
    else run_kernels<64>(out.data(), lse.data(), dqkv.data(), D.data(), qkv.data(), dout.data(), B, T, C, NH);
    std::vector<double> r_out(out_c.begin(), out_c.end()), r_dqkv(dqkv_c.begin(), dqkv_c.end());
    check("out", out.data(), r_out.data(), no, 2e-5, B, T, NH, hs);
    check("dqkv", dqkv.data(), r_dqkv.data(), nq, 2e-5, B, T, NH, hs);
    /* lse_t = log sum_{j<=t} exp(s_tj) and D_t = dout_t . out_t, in double */
    std::vector<double> r_lse((size_t)P * T), r_D((size_t)P * T);
    double sc = 1.0 / sqrt((double)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *q = &qkv[((size_t)b * T + t) * 3 * C + (size_t)h * hs];
                double mx = -INFINITY;
                std::vector<double> s(t + 1);
                for (int j = 0; j <= t; j++) {
                    const float *k = &qkv[((size_t)b * T + j) * 3 * C + C + (size_t)h * hs];
                    double acc = 0.0;
                    for (int d = 0; d < hs; d++) acc += (double)q[d] * k[d];
                    s[j] = acc * sc;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0.0;
                for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
                size_t r = ((size_t)b * NH + h) * T + t;
                r_lse[r] = mx + log(sum);
                double dd = 0.0;
                for (int d = 0; d < hs; d++)
                    dd += (double)dout[((size_t)b * T + t) * C + (size_t)h * hs + d] * out_c[((size_t)b * T + t) * C + (size_t)h * hs + d];
                r_D[r] = dd;
            }
    check("lse", lse.data(), r_lse.data(), r_lse.size(), 1e-5, B, T, NH, hs);
    check("D", D.data(), r_D.data(), r_D.size(), 2e-5, B, T, NH, hs);
}

} // namespace

Test(flash_emu, kernels_match_cpu_attention) {
    g_seed = test_seed("flash_emu");
    g_rng = g_seed;
    const nawal_ops *o = nawal_ops_cpu(0);
    /* fixed corners, then random shapes */
    one_case(o, 1, 1, 1, 1);
    one_case(o, 1, 129, 1, 64);   /* three 64-row blocks, partial last tile */
    one_case(o, 2, 64, 2, 33);    /* exactly one block; HS 64 with padding */
    one_case(o, 1, 97, 3, 32);    /* HS 32, no padding */
    for (int r = 0; r < 3; r++)
        one_case(o, 1 + test_rand_int(&g_rng, 2), 1 + test_rand_int(&g_rng, 150), 1 + test_rand_int(&g_rng, 3),
                 1 + test_rand_int(&g_rng, 64));
}
