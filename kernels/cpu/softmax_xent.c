/* softmax_xent.c - CPU fused softmax + cross-entropy forward/backward.
 * One pass per row: max, log-sum-exp, loss, then (if asked) the gradient
 * (p - onehot) * scale written over the logits. Probabilities never stored. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>

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
        float sum = 0.0f;
        for (int i = 0; i < V; i++) sum += nawal_expf(x[i] - mx);
        float lse = logf(sum);
        losses[n] = lse - (x[tgt] - mx);
        if (grad_scale != 0.0f) {
            float inv = 1.0f / sum;
            for (int i = 0; i < V; i++) x[i] = nawal_expf(x[i] - mx) * inv * grad_scale;
            x[tgt] -= grad_scale;
        }
    }
}
