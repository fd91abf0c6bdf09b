/* embedding.c - CPU token + position embedding forward/backward.
 * The backward scatters by token; it is parallel over channel blocks so two
 * positions with the same token never race and sums run in a fixed order. */
#include "cpu_ops.h"

void cpu_embedding_fwd(const nawal_ops *o, float *out, const int32_t *tok,
                       const float *wte, const float *wpe, int B, int T, int C) {
    (void)o;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *y = out + ((size_t)b * T + t) * C;
            const float *e = wte + (size_t)tok[b * T + t] * C, *p = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) y[i] = e[i] + p[i];
        }
}

void cpu_embedding_bwd(const nawal_ops *o, float *dwte, float *dwpe, const float *dout,
                       const int32_t *tok, int B, int T, int C) {
    (void)o;
    int nblk = (C + 31) / 32;
    #pragma omp parallel for
    for (int bk = 0; bk < nblk; bk++) {
        int c0 = bk * 32, c1 = c0 + 32 < C ? c0 + 32 : C;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const float *dy = dout + ((size_t)b * T + t) * C;
                float *de = dwte + (size_t)tok[b * T + t] * C, *dp = dwpe + (size_t)t * C;
                for (int c = c0; c < c1; c++) { de[c] += dy[c]; dp[c] += dy[c]; }
            }
    }
}
