/* topk.h - the order and the radix digits that every backend's topk_select
 * (ops.h) shares, so the CPU (kernels/cpu/topk.c) and the GPU
 * (kernels/cuda/topk.cu) select exactly the same elements.
 *
 * Order: by key = the bits of x with the sign cleared, as an unsigned
 * integer. For finite x that is the order of |x| (+0 and -0 are equal);
 * NaNs rank above infinities. Equal keys go to the lower index.
 *
 * Selection is a radix select on the 31-bit key in three digits, most
 * significant first: 11 bits (2048 bins), 10 bits, 10 bits. Each level
 * histograms the digit of the elements whose higher digits equal the prefix
 * found so far and picks the bin holding the k-th largest, so after three
 * levels the k-th largest key T is known exactly, with the number of keys
 * above it; the result is every element with key > T and the first
 * (k - count above) elements with key == T in index order. */
#ifndef NAWAL_TOPK_H
#define NAWAL_TOPK_H

#include "hd.h"
#include <stdint.h>

#define NAWAL_TOPK_LEVELS 3
#define NAWAL_TOPK_MAX_BINS 2048

NAWAL_HD uint32_t nawal_topk_key(float x) {
    union { float f; uint32_t u; } b;
    b.f = x;
    return b.u & 0x7fffffffu;
}

/* digit `level` of a key is (key >> shift) & (bins - 1); the elements taking
 * part in that level are those with key >> (shift + bits) == prefix */
NAWAL_HD int nawal_topk_shift(int level) { return 20 - 10 * level; }
NAWAL_HD int nawal_topk_bits(int level) { return level ? 10 : 11; }

/* The bin (scanning from the top) where the need-th largest element lies,
 * 1 <= need <= sum of hist; *above gets the count in higher bins. */
NAWAL_HD uint32_t nawal_topk_pick(const unsigned long long *hist, uint32_t bins, unsigned long long need,
                                  unsigned long long *above) {
    unsigned long long acc = 0;
    uint32_t b = bins - 1;
    for (; b > 0; b--) {
        if (acc + hist[b] >= need) break;
        acc += hist[b];
    }
    *above = acc;
    return b;
}

#endif
