/* attention.c - CPU causal multi-head self-attention forward/backward.
 *
 * One (batch, head) pair per OpenMP iteration: each pair owns its slices of
 * out/att/dqkv, so there are no races and no atomics. qkv[B][T][3C] holds
 * q, k, v side by side; head h uses channels [h*hs, (h+1)*hs) of each,
 * hs = C/NH. att[B][NH][T][T] stores the softmax probabilities (upper
 * triangle zero).
 * The four products per pair (Q K^T, P V and their backward) are small
 * strided GEMMs through oneDNN (single-threaded inside the parallel loop);
 * computing the full T x T square wastes the masked half but still runs
 * several times faster than causal-only scalar loops. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>
#include <string.h>

void cpu_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv,
                       int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
            float *p = att + ((size_t)b * NH + h) * T * T;
            /* S = scale Q K^T, then causal softmax per row in place */
            cpu_sgemm('N', 'T', T, T, hs, scale, q, C3, k, C3, 0.0f, p, T);
            for (int t = 0; t < T; t++) {
                float *row = p + (size_t)t * T;
                int n = t + 1;
                float mx = -INFINITY;
                for (int t2 = 0; t2 < n; t2++) mx = row[t2] > mx ? row[t2] : mx;
                float sum = 0.0f;
                for (int t2 = 0; t2 < n; t2++) { float e = nawal_expf(row[t2] - mx); row[t2] = e; sum += e; }
                float inv = 1.0f / sum;
                for (int t2 = 0; t2 < n; t2++) row[t2] *= inv;
                for (int t2 = n; t2 < T; t2++) row[t2] = 0.0f;
            }
            /* Y = P V */
            cpu_sgemm('N', 'N', T, hs, T, 1.0f, p, T, v, C3, 0.0f, out + (size_t)b * T * C + h * hs, C);
        }
    }
}

void cpu_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout,
                       const float *qkv, const float *att, int B, int T, int C, int NH) {
    (void)o;
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + (size_t)b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
            const float *p = att + ((size_t)b * NH + h) * T * T;
            const float *dy = dout + (size_t)b * T * C + h * hs;
            float *ds = datt + ((size_t)b * NH + h) * T * T;
            /* dP = dY V^T ; dV = P^T dY */
            cpu_sgemm('N', 'T', T, T, hs, 1.0f, dy, C, v, C3, 0.0f, ds, T);
            cpu_sgemm('T', 'N', T, hs, T, 1.0f, p, T, dy, C, 0.0f, dv, C3);
            /* softmax backward: dS = P (dP - rowsum(P dP)) * scale (zero above the diagonal) */
            for (int t = 0; t < T; t++) {
                const float *pr = p + (size_t)t * T;
                float *dr = ds + (size_t)t * T;
                int n = t + 1;
                float dot = 0.0f;
                for (int t2 = 0; t2 < n; t2++) dot += pr[t2] * dr[t2];
                for (int t2 = 0; t2 < n; t2++) dr[t2] = pr[t2] * (dr[t2] - dot) * scale;
                for (int t2 = n; t2 < T; t2++) dr[t2] = 0.0f;
            }
            /* dQ = dS K ; dK = dS^T Q */
            cpu_sgemm('N', 'N', T, hs, T, 1.0f, ds, T, k, C3, 0.0f, dq, C3);
            cpu_sgemm('T', 'N', T, hs, T, 1.0f, ds, T, q, C3, 0.0f, dk, C3);
        }
    }
}
