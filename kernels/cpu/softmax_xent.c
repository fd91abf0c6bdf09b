/* softmax_xent.c - CPU fused softmax + cross-entropy forward/backward.
 * One pass per row: max, log-sum-exp, loss, then (if asked) the gradient
 * (p - onehot) * scale written over the logits. Probabilities never stored. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>

/* sum of exp(x[i] - mx) in 16 interleaved fp32 partial sums added pairwise:
 * vectorises, and keeps the rounding error of a 50k-entry vocabulary row
 * ~16x below a single running sum */
static float sum_exp(const float *restrict x, int V, float mx) {
    float part[16] = { 0 };
    int i = 0;
    for (; i + 16 <= V; i += 16)
        for (int j = 0; j < 16; j++) part[j] += nawal_expf(x[i + j] - mx);
    for (int j = 0; i < V; i++, j++) part[j] += nawal_expf(x[i] - mx);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) part[j] += part[j + w];
    return part[0];
}

void cpu_softmax_xent(const nawal_ops *o, float *logits, float *losses, const int32_t *targets,
                      int N, int V, float grad_scale) {
    (void)o;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *x = logits + (size_t)n * V;
        int tgt = targets[n];
        if (tgt < 0) {
            losses[n] = 0.0f;
            if (grad_scale != 0.0f)
                for (int i = 0; i < V; i++) x[i] = 0.0f;
            continue;
        }
        float mx = -INFINITY;
        for (int i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
        float sum = sum_exp(x, V, mx);
        float lse = logf(sum);
        losses[n] = lse - (x[tgt] - mx);
        if (grad_scale != 0.0f) {
            float inv = 1.0f / sum;
            for (int i = 0; i < V; i++) x[i] = nawal_expf(x[i] - mx) * inv * grad_scale;
            x[tgt] -= grad_scale;
        }
    }
}
