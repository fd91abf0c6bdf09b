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

#endif
