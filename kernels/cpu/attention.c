/* attention.c - CPU causal multi-head self-attention forward/backward.
 *
 * Plain loops, one (batch, head) pair per OpenMP iteration: each pair owns
 * its slices of out/att/dqkv, so there are no races and no atomics.
 * qkv[B][T][3C] holds q, k, v side by side; head h uses channels
 * [h*hs, (h+1)*hs) of each, hs = C/NH. att[B][NH][T][T] stores the softmax
 * probabilities (upper triangle zero). */
#include "cpu_ops.h"
#include <math.h>
#include <string.h>

void cpu_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                       int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * C3;
            float *attbh = att + ((size_t)b * NH + h) * T * T;
            for (int t = 0; t < T; t++) {
                const float *q = base + (size_t)t * C3 + h * hs;
                float *row = attbh + (size_t)t * T;
                float mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = base + (size_t)t2 * C3 + C + h * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) d += q[i] * k[i];
                    d *= scale;
                    row[t2] = d;
                    if (d > mx) mx = d;
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { float e = expf(row[t2] - mx); row[t2] = e; sum += e; }
                float inv = 1.0f / sum;
                for (int t2 = 0; t2 <= t; t2++) row[t2] *= inv;
                for (int t2 = t + 1; t2 < T; t2++) row[t2] = 0.0f;
                float *y = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) y[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = base + (size_t)t2 * C3 + 2 * C + h * hs;
                    float a = row[t2];
                    for (int i = 0; i < hs; i++) y[i] += a * v[i];
                }
            }
        }
    }
}

void cpu_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                       const float *qkv, const float *att, int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * C3;
            float *dbase = dqkv + (size_t)b * T * C3;
            const float *attbh = att + ((size_t)b * NH + h) * T * T;
            float *dattbh = datt + ((size_t)b * NH + h) * T * T;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < 3; j++)
                    memset(dbase + (size_t)t * C3 + j * C + h * hs, 0, (size_t)hs * sizeof(float));
            for (int t = 0; t < T; t++) {
                const float *dy = dout + ((size_t)b * T + t) * C + h * hs;
                const float *arow = attbh + (size_t)t * T;
                float *drow = dattbh + (size_t)t * T;
                /* datt = dy . v ; dv += att * dy */
                float dot = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = base + (size_t)t2 * C3 + 2 * C + h * hs;
                    float *dv = dbase + (size_t)t2 * C3 + 2 * C + h * hs;
                    float d = 0.0f, a = arow[t2];
                    for (int i = 0; i < hs; i++) { d += dy[i] * v[i]; dv[i] += a * dy[i]; }
                    drow[t2] = d;
                    dot += a * d;
                }
                /* softmax backward, then into q and k */
                const float *q = base + (size_t)t * C3 + h * hs;
                float *dq = dbase + (size_t)t * C3 + h * hs;
                for (int t2 = 0; t2 <= t; t2++) {
                    float dpre = arow[t2] * (drow[t2] - dot) * scale;
                    const float *k = base + (size_t)t2 * C3 + C + h * hs;
                    float *dk = dbase + (size_t)t2 * C3 + C + h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += dpre * k[i]; dk[i] += dpre * q[i]; }
                }
            }
        }
    }
}
