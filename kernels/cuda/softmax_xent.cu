/* softmax_xent.cu - CUDA fused softmax + cross-entropy forward/backward.
 * One block per row of logits[N][V]: an online max/sum pass (each thread
 * keeps a running max and a sum rescaled when the max grows), a fixed-order
 * block reduction, the loss, then (if asked) the gradient
 * (p - onehot) * grad_scale written over the logits. Probabilities are
 * never stored. */
#include "cuda_common.h"
#include "elementwise.h"
#include <math.h>

#define XENT_THREADS 512

__global__ static void softmax_xent_kernel(float *logits, float *losses, const int32_t *targets, int V,
                                           float grad_scale) {
    __shared__ float sh_m[XENT_THREADS], sh_s[XENT_THREADS];
    int n = blockIdx.x;
    float *x = logits + (size_t)n * V;
    int tgt = targets[n];
    if (tgt < 0) {
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (grad_scale != 0.0f)
            for (int i = threadIdx.x; i < V; i += blockDim.x) x[i] = 0.0f;
        return;
    }
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v > m) { s = s * nawal_expf(m - v) + 1.0f; m = v; }
        else s += nawal_expf(v - m);
    }
    sh_m[threadIdx.x] = m;
    sh_s[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) {
            float m1 = sh_m[threadIdx.x], m2 = sh_m[threadIdx.x + w];
            float s1 = sh_s[threadIdx.x], s2 = sh_s[threadIdx.x + w];
            float mm = fmaxf(m1, m2);
            /* a thread that saw no element has m = -inf and s = 0 */
            float a = s1 == 0.0f ? 0.0f : s1 * nawal_expf(m1 - mm);
            float b = s2 == 0.0f ? 0.0f : s2 * nawal_expf(m2 - mm);
            sh_m[threadIdx.x] = mm;
            sh_s[threadIdx.x] = a + b;
        }
        __syncthreads();
    }
    float mx = sh_m[0], sum = sh_s[0];
    if (threadIdx.x == 0) losses[n] = logf(sum) - (x[tgt] - mx);
    if (grad_scale == 0.0f) return;
    __syncthreads(); /* x[tgt] read above before it is overwritten */
    float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = nawal_expf(x[i] - mx) * inv * grad_scale;
        x[i] = i == tgt ? g - grad_scale : g;
    }
}

void cuda_softmax_xent(const nawal_ops *o, float *logits, float *losses, const int32_t *targets,
                       int N, int V, float grad_scale) {
    if (N <= 0) return;
    softmax_xent_kernel<<<N, XENT_THREADS, 0, CUDA_STATE(o)->stream>>>(logits, losses, targets, V, grad_scale);
    LAUNCH_CHECK("softmax_xent", "softmax_xent_kernel");
}
