/* elementwise.h - per-element formulas shared by the CPU and CUDA backends.
 *
 * One formula, two backends: tanh-GELU, AdamW and SGD-momentum updates,
 * layernorm's normalisation step. Each is a NAWAL_HD inline so the CUDA
 * kernels and the CPU loops call the identical code. */
#ifndef NAWAL_ELEMENTWISE_H
#define NAWAL_ELEMENTWISE_H

#include "hd.h"
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NAWAL_GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

/* exp(x) without libm, branch-free so loops over it vectorise (AVX-512 on
 * the CPU; plain FMAs on the GPU): x = n ln2 + r, |r| <= ln2/2, e^r by a
 * degree-6 Taylor polynomial (relative error < 2e-7 on that range), times
 * 2^n built in the exponent bits. Inputs are clamped to [-87, 88]. */
NAWAL_HD float nawal_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round to nearest by the 1.5*2^23 trick (no floorf: it blocks vectorisation) */
    float n = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;       /* ln2 split in two for accuracy */
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6.0f + r * (1.0f / 24.0f + r * (1.0f / 120.0f + r * (1.0f / 720.0f))))));
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* tanh(u) = 1 - 2 / (e^{2u} + 1), absolute error ~1e-7 */
NAWAL_HD float nawal_tanhf(float u) { return 1.0f - 2.0f / (nawal_expf(2.0f * u) + 1.0f); }

/* GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
NAWAL_HD float nawal_gelu(float x) {
    float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + nawal_tanhf(NAWAL_GELU_SCALE * (x + cube)));
}

/* d gelu(x) / dx */
NAWAL_HD float nawal_gelu_grad(float x) {
    float cube = 0.044715f * x * x * x;
    float u = NAWAL_GELU_SCALE * (x + cube);
    float th = nawal_tanhf(u);
    float sech2 = 1.0f - th * th;
    return 0.5f * (1.0f + th) + 0.5f * x * sech2 * NAWAL_GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

/* One AdamW element (decoupled weight decay, bias-corrected moments).
 * b1c = 1 - beta1^t and b2c = 1 - beta2^t are precomputed by the caller. */
NAWAL_HD void nawal_adamw_elem(float *p, float g, float *m, float *v, float lr,
                               float beta1, float beta2, float b1c, float b2c,
                               float eps, float wd) {
    float mm = beta1 * *m + (1.0f - beta1) * g;
    float vv = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mm;
    *v = vv;
    float mhat = mm / b1c;
    float vhat = vv / b2c;
    *p -= lr * (mhat / (sqrtf(vhat) + eps) + wd * *p);
}

/* One SGD element with (optional) momentum buffer and weight decay, PyTorch
 * convention: g' = g + wd p; buf = mu buf + g'; p -= lr buf. */
NAWAL_HD void nawal_sgd_elem(float *p, float g, float *buf, float lr, float mu, float wd) {
    float gg = g + wd * *p;
    float b = mu * *buf + gg;
    *buf = b;
    *p -= lr * b;
}

/* pe_sum's element: y + (((0 + s_0 x_0) + s_1 x_1) + ...), the examples in
 * order, products and sums rounded separately (no FMA contraction: the
 * CUDA file that uses it is built with --fmad=false). One term: */
NAWAL_HD float nawal_pe_sum_term(float acc, float scale, float x) { return acc + scale * x; }

#endif
