/* optim.cu - CUDA AdamW and SGD(+momentum) updates over a flat range, per
 * element with the formulas of the shared elementwise.h; the bias
 * corrections are computed on the host exactly as the CPU backend does. */
#include "cuda_map.cuh"
#include "elementwise.h"
#include <math.h>

void cuda_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
                float lr, float beta1, float beta2, float eps, float wd, int t) {
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    cuda_map(o, "adamw", n, [=] __device__(size_t i) {
        nawal_adamw_elem(&p[i], g[i], &m[i], &v[i], lr, beta1, beta2, b1c, b2c, eps, wd);
    });
}

void cuda_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
              float lr, float momentum, float wd) {
    cuda_map(o, "sgd", n, [=] __device__(size_t i) { nawal_sgd_elem(&p[i], g[i], &buf[i], lr, momentum, wd); });
}
