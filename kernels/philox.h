/* philox.h - counter-based Philox4x32-10 random numbers, one formula for the
 * CPU and the GPU (NAWAL_HD). The same (key, counter) gives the same four
 * 32-bit words on either backend, so parameter init and, later, DP noise
 * streams are reproducible across devices. Normals via Box-Muller. */
#ifndef NAWAL_PHILOX_H
#define NAWAL_PHILOX_H

#include "hd.h"
#include <math.h>
#include <stdint.h>

typedef struct { uint32_t v[4]; } nawal_philox_ctr;

NAWAL_HD void nawal_philox_round(uint32_t *c, const uint32_t *k) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k[0], n1 = lo1, n2 = hi0 ^ c[3] ^ k[1], n3 = lo0;
    c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
}

/* Philox4x32-10 block: 4 random words for (key, counter). */
NAWAL_HD nawal_philox_ctr nawal_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
    uint32_t k[2] = { (uint32_t)key, (uint32_t)(key >> 32) };
    nawal_philox_ctr c = { { (uint32_t)counter_lo, (uint32_t)(counter_lo >> 32),
                             (uint32_t)counter_hi, (uint32_t)(counter_hi >> 32) } };
    for (int r = 0; r < 10; r++) {
        nawal_philox_round(c.v, k);
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
    }
    return c;
}

/* uniform in (0, 1]: never 0, so log() below is finite */
NAWAL_HD float nawal_u32_to_unit(uint32_t x) { return ((float)(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }

/* Two standard normals from element pair index i of stream (key, stream). */
NAWAL_HD void nawal_philox_normal2(uint64_t key, uint64_t stream, uint64_t i, float *z0, float *z1) {
    nawal_philox_ctr r = nawal_philox4x32(key, stream, i);
    float u1 = nawal_u32_to_unit(r.v[0]), u2 = nawal_u32_to_unit(r.v[1]);
    float rad = sqrtf(-2.0f * logf(u1));
    float th = 6.283185307179586f * u2;
    *z0 = rad * cosf(th);
    *z1 = rad * sinf(th);
}

/* DP noise: the same Box-Muller pair without libm, so the CPU and the GPU
 * compute it bit for bit (libm's and CUDA's logf/cosf/sinf differ in the
 * last bit, and CUDA's sinf keeps a local-memory slow path) and loops over
 * it vectorise. Every operation is a single IEEE float operation: the CPU
 * build does not contract (ISO C), kernels/cuda/dp.cu is built with
 * --fmad=false. Relative error vs the libm version ~1e-7 (tested). */

/* ln x for a normal float x in (0, 1]: x = m 2^e with m in [sqrt(1/2),
 * sqrt(2)), ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172; the odd
 * series to s^11 leaves 0.172^13 / 13 < 1e-11 */
NAWAL_HD float nawal_ln_unit(float x) {
    union { float f; uint32_t u; } v;
    v.f = x;
    int e = (int)((v.u >> 23) & 0xffu) - 127;
    v.u = (v.u & 0x007fffffu) | 0x3f800000u;
    float m = v.f;
    int big = m > 1.41421356f; /* selects, not a branch: loops over it vectorise */
    m = big ? m * 0.5f : m;
    e = e + big;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 2.0f + s2 * (0.6666666667f + s2 * (0.4f + s2 * (0.2857142857f + s2 * (0.2222222222f + s2 * 0.1818181818f))));
    return s * p + (float)e * 0.693147180559945f;
}

/* cos and sin of 2 pi u for u in [0, 1]: u*4 = q + f with q the nearest
 * integer, |f| <= 1/2, so 2 pi u = q pi/2 + a, |a| <= pi/4; Taylor series of
 * cos a and sin a to a^10 / a^11 (error < 3e-9), then the quadrant swap
 * written as selects (no branches: loops over it vectorise) */
NAWAL_HD void nawal_cossin_2pi(float u, float *c, float *sn) {
    float t = u * 4.0f;
    int q = (int)(t + 0.5f);
    float a = (t - (float)q) * 1.5707963267948966f, a2 = a * a;
    float ca = 1.0f + a2 * (-0.5f + a2 * (0.0416666667f + a2 * (-0.0013888889f + a2 * (2.4801587e-5f + a2 * -2.7557319e-7f))));
    float sa = a * (1.0f + a2 * (-0.1666666667f + a2 * (0.0083333333f + a2 * (-1.98412698e-4f + a2 * (2.7557319e-6f + a2 * -2.5052108e-8f)))));
    int odd = q & 1, neg_c = ((q + 1) >> 1) & 1, neg_s = (q >> 1) & 1;
    float cc = odd ? sa : ca, ss = odd ? ca : sa;
    *c = neg_c ? -cc : cc;
    *sn = neg_s ? -ss : ss;
}

/* Box-Muller without libm: two standard normals from two uniforms in (0, 1] */
NAWAL_HD void nawal_box_muller(float u1, float u2, float *z0, float *z1) {
    float rad = sqrtf(-2.0f * nawal_ln_unit(u1));
    float c, sn;
    nawal_cossin_2pi(u2, &c, &sn);
    *z0 = rad * c;
    *z1 = rad * sn;
}

/* Four standard normals from Philox block j of stream (key, stream): words
 * (0, 1) and (2, 3) through nawal_box_muller. The DP noise of both
 * backends: element i of a noise vector is z_(i % 4) of block i / 4. */
NAWAL_HD void nawal_philox_gauss4(uint64_t key, uint64_t stream, uint64_t j, float *z0, float *z1, float *z2,
                                  float *z3) {
    nawal_philox_ctr r = nawal_philox4x32(key, stream, j);
    nawal_box_muller(nawal_u32_to_unit(r.v[0]), nawal_u32_to_unit(r.v[1]), z0, z1);
    nawal_box_muller(nawal_u32_to_unit(r.v[2]), nawal_u32_to_unit(r.v[3]), z2, z3);
}

#endif
