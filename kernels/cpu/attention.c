/* attention.c - CPU causal multi-head self-attention forward/backward.
 *
 * One (batch, head) pair per OpenMP iteration: each pair owns its slices of
 * out/att/dqkv, so there are no races and no atomics. qkv[B][T][3C] holds
 * q, k, v side by side; head h uses channels [h*hs, (h+1)*hs) of each,
 * hs = C/NH. att[B][NH][T][T] stores the softmax probabilities (upper
 * triangle zero).
 * Every inner loop is an axpy over a contiguous row (no dot-product
 * reductions), so it vectorises without reassociating sums: K and V of the
 * pair are first transposed into per-thread buffers kt/vt [hs][T]. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* kt[i][t] = k[t][i] for the pair's k (or v) slice */
static void transpose_head(float *restrict kt, const float *restrict src, int T, int hs, int stride) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hs; i++) kt[(size_t)i * T + t] = src[(size_t)t * stride + i];
}

static void axpy_row(float *restrict y, float a, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static float *thread_buffer(size_t floats) {
    float *p = malloc(floats * sizeof(float));
    if (!p) { fprintf(stderr, "nawal: out of memory in attention\n"); abort(); }
    return p;
}

void cpu_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                       int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel
    {
        float *kt = thread_buffer((size_t)hs * T);
        #pragma omp for collapse(2)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const float *base = qkv + (size_t)b * T * C3;
                float *attbh = att + ((size_t)b * NH + h) * T * T;
                transpose_head(kt, base + C + h * hs, T, hs, C3);
                for (int t = 0; t < T; t++) {
                    const float *q = base + (size_t)t * C3 + h * hs;
                    float *row = attbh + (size_t)t * T;
                    int n = t + 1;
                    memset(row, 0, (size_t)T * sizeof(float));
                    for (int i = 0; i < hs; i++) axpy_row(row, q[i] * scale, kt + (size_t)i * T, n);
                    float mx = -INFINITY;
                    for (int t2 = 0; t2 < n; t2++) mx = row[t2] > mx ? row[t2] : mx;
                    float sum = 0.0f;
                    for (int t2 = 0; t2 < n; t2++) { float e = nawal_expf(row[t2] - mx); row[t2] = e; sum += e; }
                    float inv = 1.0f / sum;
                    for (int t2 = 0; t2 < n; t2++) row[t2] *= inv;
                    float *y = out + ((size_t)b * T + t) * C + h * hs;
                    memset(y, 0, (size_t)hs * sizeof(float));
                    for (int t2 = 0; t2 < n; t2++) axpy_row(y, row[t2], base + (size_t)t2 * C3 + 2 * C + h * hs, hs);
                }
            }
        }
        free(kt);
    }
}

void cpu_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                       const float *qkv, const float *att, int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel
    {
        float *vt = thread_buffer((size_t)hs * T);
        #pragma omp for collapse(2)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++) {
                const float *base = qkv + (size_t)b * T * C3;
                float *dbase = dqkv + (size_t)b * T * C3;
                const float *attbh = att + ((size_t)b * NH + h) * T * T;
                float *dattbh = datt + ((size_t)b * NH + h) * T * T;
                transpose_head(vt, base + 2 * C + h * hs, T, hs, C3);
                for (int t = 0; t < T; t++)
                    for (int j = 0; j < 3; j++)
                        memset(dbase + (size_t)t * C3 + j * C + h * hs, 0, (size_t)hs * sizeof(float));
                for (int t = 0; t < T; t++) {
                    const float *dy = dout + ((size_t)b * T + t) * C + h * hs;
                    const float *arow = attbh + (size_t)t * T;
                    float *drow = dattbh + (size_t)t * T;
                    int n = t + 1;
                    /* datt[t2] = dy . v[t2]; dv[t2] += att[t2] dy */
                    memset(drow, 0, (size_t)n * sizeof(float));
                    for (int i = 0; i < hs; i++) axpy_row(drow, dy[i], vt + (size_t)i * T, n);
                    for (int t2 = 0; t2 < n; t2++) axpy_row(dbase + (size_t)t2 * C3 + 2 * C + h * hs, arow[t2], dy, hs);
                    /* softmax backward: dpre = att (datt - sum(att datt)), then into q and k */
                    float dot = 0.0f;
                    for (int t2 = 0; t2 < n; t2++) dot += arow[t2] * drow[t2];
                    for (int t2 = 0; t2 < n; t2++) drow[t2] = arow[t2] * (drow[t2] - dot) * scale;
                    const float *q = base + (size_t)t * C3 + h * hs;
                    float *dq = dbase + (size_t)t * C3 + h * hs;
                    for (int t2 = 0; t2 < n; t2++) {
                        axpy_row(dq, drow[t2], base + (size_t)t2 * C3 + C + h * hs, hs);
                        axpy_row(dbase + (size_t)t2 * C3 + C + h * hs, drow[t2], q, hs);
                    }
                }
            }
        }
        free(vt);
    }
}
